"""Perturbed test environment of DecPG (paper 002_4f291ba56d03e11d.txt, sec. 4).

"We inject Gaussian noise into the observation space, with a mean of 0 and a
standard deviation equal to c times the sample standard deviation [...] we
assign a small probability eps for agents' actions to be replaced with random
ones uniformly sampled from each agent's set of available actions at each
timestep."

Both perturbations act on what the policy sees and emits, so they are applied
by wrapping the policy (:class:`PerturbedPolicy`) rather than the environment:
the same test environment, seeds and episode bookkeeping serve the clean and
the perturbed evaluation.

"The sample standard deviation" is read as the spread of each observation
*feature* over the observations sampled from the test environment: each feature
``f`` gets noise ``N(0, (c s_f)^2)``, with ``s_f`` the sample standard
deviation of feature ``f`` over every observation of that key seen so far by
this wrapper (all parallel envs, all agents of the group, all steps up to and
including the current one; Welford/Chan running moments). A feature that
hardly varies (a constant id, a one-hot that never changes) gets hardly any
noise; a position that spans the arena gets noise on its own scale, which is
what "c times the sample standard deviation" scales. Pooling over the agents
of a group suits the paper's homogeneous scenarios and gives an estimate from
the first step when a group has several agents; with one agent in one env the
first step's std is 0 (no noise) and the estimate fills in as the episode
runs. An earlier version used the std across the features of one agent's
vector at one step (one scalar for all features), which mixes the scales of
unrelated features (positions, velocities, ids) and is not a per-feature
sample statistic. :class:`PerturbedPolicy` is built anew for every evaluation
(DecPG), so the statistics are those of that evaluation's test episodes.
"""

from __future__ import annotations

from typing import Sequence

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torchrl.data import Categorical, OneHot


class PerturbedPolicy(TensorDictModuleBase):
    """Wraps a policy with observation noise and random action replacement.

    Args:
        policy: the policy to perturb (reads observations, writes actions).
        observation_keys: nested keys of the observations to perturb (float).
        action_keys: nested action keys, one per agent group.
        action_specs: the spec of each action key (same order).
        mask_keys: the action-mask key of each group, or ``None``.
        c: observation noise, as a multiple of each feature's sample std (module docstring).
            Default: 0.2 (paper 002 Table 1, MPE).
        eps: probability that an agent's action is replaced by a uniformly
            random available one. Default: 0.2 (Table 1, MPE).
        generator: optional torch generator for reproducible perturbations.
    """

    def __init__(
        self,
        policy: TensorDictModuleBase,
        *,
        observation_keys: Sequence,
        action_keys: Sequence,
        action_specs: Sequence,
        mask_keys: Sequence | None = None,
        c: float = 0.2,
        eps: float = 0.2,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if c < 0:
            raise ValueError(f"perturbation c must be >= 0, got {c}")
        if not 0 <= eps <= 1:
            raise ValueError(f"perturbation eps must be in [0, 1], got {eps}")
        self.policy = policy
        self.observation_keys = list(observation_keys)
        self.action_keys = list(action_keys)
        self.action_specs = list(action_specs)
        self.mask_keys = list(mask_keys) if mask_keys is not None else [None] * len(
            self.action_keys
        )
        self.c = c
        self.eps = eps
        self.generator = generator
        #: per observation key: running (count, mean, M2) of every feature, float64
        self._moments: dict = {}
        self.in_keys = list(policy.in_keys)
        self.out_keys = list(policy.out_keys)

    @classmethod
    def from_experiment(
        cls, experiment, *, c: float, eps: float, generator: torch.Generator | None = None
    ) -> "PerturbedPolicy":
        """Perturb ``experiment.policy``: every group's observations, actions and masks."""
        obs_keys, action_keys, specs, masks = [], [], [], []
        for group in experiment.group_map:
            obs_keys += [
                (group, *((k,) if isinstance(k, str) else k))
                for k in experiment.observation_spec[group].keys(True, True)
            ]
            action_keys.append((group, "action"))
            specs.append(experiment.action_spec[group, "action"])
            mask_spec = experiment.action_mask_spec
            has_mask = mask_spec is not None and group in mask_spec.keys()
            masks.append((group, "action_mask") if has_mask else None)
        return cls(
            experiment.policy,
            observation_keys=obs_keys,
            action_keys=action_keys,
            action_specs=specs,
            mask_keys=masks,
            c=c,
            eps=eps,
            generator=generator,
        )

    def feature_std(self, key, obs: torch.Tensor) -> torch.Tensor:
        """Add ``obs`` (``(..., F)``) to ``key``'s running moments; return the per-feature sample std ``(F,)``.

        The population std (``correction=0``) of every feature over all
        observations of ``key`` seen so far (envs x agents x steps).
        """
        x = obs.detach().reshape(-1, obs.shape[-1]).to(torch.float64)
        n_b = x.shape[0]
        mean_b = x.mean(0)
        m2_b = (x - mean_b).pow(2).sum(0)
        if key not in self._moments:
            count, mean, m2 = n_b, mean_b, m2_b
        else:  # Chan et al.'s parallel update
            count_a, mean_a, m2_a = self._moments[key]
            count = count_a + n_b
            d = mean_b - mean_a
            mean = mean_a + d * (n_b / count)
            m2 = m2_a + m2_b + d.pow(2) * (count_a * n_b / count)
        self._moments[key] = (count, mean, m2)
        return (m2 / count).sqrt().to(obs.dtype)

    def _randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.shape, generator=self.generator, device=x.device, dtype=x.dtype)

    def _rand(self, shape, device) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator, device=device)

    def _random_action(self, action: torch.Tensor, spec, mask: torch.Tensor | None):
        if isinstance(spec, (Categorical, OneHot)):
            n = spec.space.n
            batch_shape = action.shape[:-1] if isinstance(spec, OneHot) else action.shape
            if mask is None:
                probs = torch.ones(*batch_shape, n, device=action.device)
            else:
                probs = mask.to(torch.float32).expand(*batch_shape, n)
            flat = probs.reshape(-1, n)
            sample = torch.multinomial(flat, 1, generator=self.generator).reshape(batch_shape)
            if isinstance(spec, OneHot):
                return torch.nn.functional.one_hot(sample, n).to(action.dtype)
            return sample.to(action.dtype)
        low = spec.space.low.to(action.device)
        high = spec.space.high.to(action.device)
        return low + (high - low) * self._rand(action.shape, action.device)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        clean = {}
        if self.c > 0:
            for key in self.observation_keys:
                obs = tensordict.get(key)
                if not torch.is_floating_point(obs):
                    continue
                clean[key] = obs
                std = self.feature_std(key, obs)  # (F,): one sample std per feature
                tensordict.set(key, obs + self.c * std * self._randn_like(obs))
        tensordict = self.policy(tensordict)
        for key, obs in clean.items():  # the env and the logs keep the clean obs
            tensordict.set(key, obs)
        if self.eps > 0:
            for key, spec, mask_key in zip(self.action_keys, self.action_specs, self.mask_keys):
                action = tensordict.get(key)
                mask = tensordict.get(mask_key) if mask_key is not None else None
                random_action = self._random_action(action, spec, mask)
                agent_shape = action.shape[:-1] if (
                    isinstance(spec, OneHot) or not isinstance(spec, Categorical)
                ) else action.shape
                replace = self._rand(agent_shape, action.device) < self.eps
                if replace.dim() < action.dim():
                    replace = replace.unsqueeze(-1)
                tensordict.set(key, torch.where(replace, random_action, action))
        return tensordict
