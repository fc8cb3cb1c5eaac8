"""Perturbed test environment of DecPG (paper 002_4f291ba56d03e11d.txt, sec. 4).

"We inject Gaussian noise into the observation space, with a mean of 0 and a
standard deviation equal to c times the sample standard deviation [...] we
assign a small probability eps for agents' actions to be replaced with random
ones uniformly sampled from each agent's set of available actions at each
timestep."

Both perturbations act on what the policy sees and emits, so they are applied
by wrapping the policy (:class:`PerturbedPolicy`) rather than the environment:
the same test environment, seeds and episode bookkeeping serve the clean and
the perturbed evaluation. The "sample standard deviation" is taken over the
features of each agent's observation vector at that step, which is defined for
any batch size (one env or many).
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
        c: observation noise, as a multiple of the observation's sample std.
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
                std = obs.std(dim=-1, keepdim=True, correction=0)
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
