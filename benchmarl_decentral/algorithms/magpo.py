"""MAGPO: Multi-Agent Guided Policy Optimization (paper 003_13ad26f9f90dcfc4.txt, sec. 4).

A centralized autoregressive **guider** :math:`\mu_\phi` (MAT-style,
:class:`~benchmarl_decentral.nn.mat.MultiAgentTransformer`) collects the data
and is trained by PPO kept close to the learner (eqs. 9-10); decentralized
**learners** :math:`\pi_\theta` (each reads only its own observation) follow the
guider by :math:`D_{KL}(\pi\|\mu)` plus :math:`\lambda` times PPO's objective
(eqs. 11-12). Deployment uses the learners only.

How it sits in BenchMARL (1.5.2) without a fork:

* ``get_policy_for_loss(group)`` is the **learner**: BenchMARL's ``model_config``
  on the group's observations plus a one-hot agent id, ``centralised=False``,
  parameters shared across the group as in MAPPO (``experiment.share_policy_params``,
  or ``algorithm.learner_share_params``);
* ``get_policy_for_collection()`` is the **guider**: the collector samples the
  joint action agent by agent and stores the guider's per-agent conditional
  log-probabilities ``(group, "log_prob")`` and the decoding order
  ``(group, "magpo_rank")``; :meth:`Magpo.process_batch` computes GAE on the
  guider's value head;
* one loss module per group returns two optimized keys, ``loss_guider`` (eqs.
  9-10 + value loss - entropy bonus; guider parameters only) and
  ``loss_learner`` (eqs. 11-12; learner parameters only). Each detaches the other
  network, so the two graphs never overlap and BenchMARL's one-Adam-per-loss
  design applies as is;
* deployment: the algorithm's callback (:class:`_MagpoCallback`, attached by the
  algorithm since hydra runs pass no callbacks) replaces ``experiment.policy``
  (and ``experiment.group_policies``) by the learners once the collector holds
  the guider, so BenchMARL's evaluation loop, ``benchmarl evaluate`` and any
  policy taken from the experiment run the learners only;
  :meth:`Magpo.get_deployment_policy` returns the same module.
"""

from __future__ import annotations

from dataclasses import dataclass, field, MISSING
from typing import Any, Dict, Iterable, List, Optional, Tuple, Type

import torch
from benchmarl.algorithms.common import Algorithm, AlgorithmConfig
from benchmarl.experiment.callback import Callback
from benchmarl.models.common import ModelConfig
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictModuleBase, TensorDictSequential
from tensordict.nn.distributions import NormalParamExtractor
from torch import nn
from torch.distributions import Categorical as TorchCategorical
from torchrl.data import Categorical, Composite, OneHot, Unbounded
from torchrl.envs.utils import exploration_type, ExplorationType
from torchrl.modules import IndependentNormal, MaskedCategorical, ProbabilisticActor, TanhNormal
from torchrl.objectives import LossModule
from torchrl.objectives.value.functional import vec_generalized_advantage_estimate

from benchmarl_decentral.algorithms._common import config_error
from benchmarl_decentral.algorithms._yaml import load_algorithm_yaml
from benchmarl_decentral.evaluation_dropout import check_evaluation_dropout
from benchmarl_decentral.nn.mat import ActionDist, fixed_rank, INPUT_NORMS, MultiAgentTransformer, random_rank
from benchmarl_decentral.objectives.magpo import (
    action_agreement,
    check_delta,
    expected_agreement,
    check_lambda,
    guider_loss,
    learner_loss,
    normalize_advantage as standardize,
    VALUE_LOSSES,
    value_loss,
)

GUIDER_INPUTS = ("auto", "state", "observation", "both")
AGENT_ORDERS = ("shuffle", "shuffle_step", "fixed")
RANK_KEY = "magpo_rank"
AGENT_ID_KEY = "magpo_agent_id"


# ------------------------------------------------------------------ helpers
class _AgentIdOneHot(nn.Module):
    """Writes the one-hot agent id ``(*B, n, n)`` with the batch shape of an observation."""

    def __init__(self, n_agents: int, feature_dims: int):
        super().__init__()
        self.feature_dims = feature_dims
        self.register_buffer("eye", torch.eye(n_agents))

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        batch = observation.shape[: observation.dim() - self.feature_dims - 1]
        return self.eye.to(observation.device).expand(*batch, *self.eye.shape)


class GuiderInputs:
    """Builds the guider's per-agent tokens ``(*B, n, input_dim)`` from a tensordict.

    ``state``: the global state broadcast to every agent; ``observation``: each
    agent's observation (all agents together form the encoder's input);
    ``both``: the two concatenated. A one-hot agent id is appended to every token.
    """

    def __init__(self, group: str, n_agents: int, observation_spec: Composite, state_spec: Optional[Composite],
                 mode: str, mask_key: Optional[Tuple[str, str]]):
        self.group, self.n, self.mode, self.mask_key = group, n_agents, mode, mask_key
        self.obs_keys: List[Tuple[Tuple, int]] = []
        self.state_key = None
        dim = n_agents
        if mode in ("observation", "both"):
            for key, leaf in observation_spec.items(True, True):
                key = key if isinstance(key, tuple) else (key,)
                feature_shape = leaf.shape[1:]  # leaf shape (n, *features)
                self.obs_keys.append(((group, *key), len(feature_shape)))
                dim += int(torch.Size(feature_shape).numel())
        if mode in ("state", "both"):
            (key, leaf), = state_spec.items(True, True)
            self.state_key = key
            self.state_dims = len(leaf.shape)
            dim += int(leaf.shape.numel())
        self.input_dim = dim
        self._eye = torch.eye(n_agents)

    @property
    def in_keys(self) -> List:
        keys = [k for k, _ in self.obs_keys]
        if self.state_key is not None:
            keys.append(self.state_key)
        if self.mask_key is not None:
            keys.append(self.mask_key)
        return keys

    def __call__(self, td: TensorDictBase) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        parts = []
        for key, dims in self.obs_keys:
            obs = td.get(key)
            parts.append(obs.flatten(start_dim=obs.dim() - dims) if dims else obs.unsqueeze(-1))
        if self.state_key is not None:
            state = td.get(self.state_key)
            state = state.flatten(start_dim=state.dim() - self.state_dims) if self.state_dims else state.unsqueeze(-1)
            parts.append(state.unsqueeze(-2).expand(*state.shape[:-1], self.n, state.shape[-1]))
        batch = parts[0].shape[:-2]
        eye = self._eye.to(device=parts[0].device, dtype=parts[0].dtype)
        parts.append(eye.expand(*batch, self.n, self.n))
        x = torch.cat([p.to(eye.dtype) for p in parts], dim=-1)
        mask = td.get(self.mask_key) if self.mask_key is not None else None
        return x, mask


class AgentOrder(nn.Module):
    """The decoding order of the guider, as ``rank`` (position of each agent).

    ``shuffle``: one random order per training iteration (drawn anew each time a
    batch is processed, so the next collection and its update share it);
    ``shuffle_step``: an independent random order per env step and env;
    ``fixed``: ``0, 1, ..., n-1``. The order used is stored with every sample,
    so teacher forcing always conditions on the previous agents of the
    collection-time order.
    """

    def __init__(self, n_agents: int, mode: str, seed: int):
        super().__init__()
        self.n, self.mode = n_agents, mode
        self.generator = torch.Generator().manual_seed(int(seed))
        self.register_buffer("current", torch.arange(n_agents))
        self.reshuffle()

    def reshuffle(self) -> None:
        if self.mode == "shuffle":
            self.current.copy_(torch.randperm(self.n, generator=self.generator))

    def rank(self, batch_shape: torch.Size, device) -> torch.Tensor:
        if self.mode == "shuffle_step":
            return random_rank(tuple(batch_shape), self.n, generator=self.generator).to(device)
        if self.mode == "shuffle":
            return self.current.to(device).expand(*batch_shape, self.n)
        return fixed_rank(tuple(batch_shape), self.n, device=device)


class GuiderPolicy(TensorDictModuleBase):
    """The collection policy: autoregressive sampling from the guider (sec. 4.1).

    Writes ``(group, "action")``, the guider's per-agent conditional
    log-probabilities ``(group, "log_prob")`` (as recorded while sampling) and
    the decoding order ``(group, "magpo_rank")``.
    """

    def __init__(self, guider: MultiAgentTransformer, inputs: GuiderInputs, order: AgentOrder, group: str):
        super().__init__()
        self.guider, self.inputs, self.order, self.group = guider, inputs, order, group
        self.in_keys = inputs.in_keys
        self.out_keys = [(group, "action"), (group, "log_prob"), (group, RANK_KEY)]

    def forward(self, td: TensorDictBase) -> TensorDictBase:
        x, mask = self.inputs(td)
        rank = self.order.rank(x.shape[:-2], x.device)
        deterministic = exploration_type() in (
            ExplorationType.DETERMINISTIC, ExplorationType.MODE, ExplorationType.MEAN, ExplorationType.MEDIAN
        )
        action, log_prob, _ = self.guider.sample(x, rank, mask, deterministic=deterministic)
        td.set((self.group, "action"), action)
        td.set((self.group, "log_prob"), log_prob)
        td.set((self.group, RANK_KEY), rank.clone())
        return td


class MagpoLoss(LossModule):
    """Guider (eqs. 9-10) and learner (eqs. 11-12) losses of one group.

    Returns ``loss_guider`` (policy + ``critic_coef`` x value - ``entropy_coef`` x
    entropy), ``loss_learner`` and detached diagnostics. The guider is teacher-forced
    on the stored joint action and decoding order; the learner reads each
    agent's own observation. Both use the stored action mask.
    """

    def __init__(self, *, guider: MultiAgentTransformer, inputs: GuiderInputs, learner: TensorDictModule,
                 group: str, continuous: bool, action_low: Optional[torch.Tensor], action_high: Optional[torch.Tensor],
                 delta: float, aux_lambda: float, clip_epsilon: float, entropy_coef: float, critic_coef: float,
                 loss_critic_type: str, clip_value: bool, normalize_advantage: bool):
        super().__init__()
        self.guider, self.learner, self.inputs, self.group = guider, learner, inputs, group
        self.continuous = continuous
        if action_low is not None:  # squashing bounds of the learner's Gaussians, (n, d)
            self.register_buffer("action_low", action_low.clone())
            self.register_buffer("action_high", action_high.clone())
        else:
            self.action_low = self.action_high = None
        self.delta, self.aux_lambda, self.clip_epsilon = delta, aux_lambda, clip_epsilon
        self.entropy_coef, self.critic_coef = entropy_coef, critic_coef
        self.loss_critic_type, self.clip_value = loss_critic_type, clip_value
        self.normalize_advantage = normalize_advantage

    def learner_dist(self, td: TensorDictBase, mask: Optional[torch.Tensor]) -> ActionDist:
        """The learner's distributions ``pi^i(.|o^i)``, batch ``(*B, n)``."""
        # strict=False: a recurrent learner's hidden state is not in the batch, so BenchMARL's model
        # replays each minibatch sequence from a zero state, reset at is_init (as mappo trains)
        out = self.learner(td.select(*self.learner.in_keys, strict=False).clone(False))
        g = self.group
        if not self.continuous:
            return ActionDist.categorical(out.get((g, "logits")), mask)
        return ActionDist.normal(out.get((g, "loc")), out.get((g, "scale")), low=self.action_low,
                                 high=self.action_high)

    def forward(self, td: TensorDictBase) -> TensorDictBase:
        g = self.group
        x, mask = self.inputs(td)
        action = td.get((g, "action"))
        log_mu_old = td.get((g, "log_prob"))
        advantage = td.get((g, "advantage")).squeeze(-1)
        if self.normalize_advantage:
            advantage = standardize(advantage)
        mu, value = self.guider(x, action, td.get((g, RANK_KEY)), mask)
        pi = self.learner_dist(td, mask)

        guider = guider_loss(mu, pi, action, log_mu_old, advantage, delta=self.delta, epsilon=self.clip_epsilon)
        learner = learner_loss(pi, mu, action, log_mu_old, advantage, lam=self.aux_lambda, epsilon=self.clip_epsilon)
        critic = value_loss(
            value, td.get((g, "value_target")), td.get((g, "state_value")), kind=self.loss_critic_type,
            clip=self.clip_epsilon if self.clip_value else None,
        )
        entropy = mu.entropy().mean()
        loss_guider = guider.loss + self.critic_coef * critic - self.entropy_coef * entropy
        out = {
            "loss_guider": loss_guider,
            "loss_learner": learner.loss,
            "guider_objective": guider.surrogate.mean().detach(),
            "guider_kl": guider.kl.mean().detach(),
            "guider_kl_mask_fraction": guider.mask.mean(),
            "guider_clip_fraction": ((guider.ratio - 1).abs() > self.clip_epsilon).float().mean(),
            "guider_learner_log_ratio": guider.ratio_mu_pi.log().abs().mean(),
            "guider_value_loss": critic.detach(),
            "guider_entropy": entropy.detach(),
            "learner_kl": learner.kl.mean().detach(),
        }
        if learner.surrogate is not None:
            out["learner_objective"] = learner.surrogate.mean().detach()
        out.update(self.symmetry_diagnostics(pi, action))
        return TensorDict(out, batch_size=[])

    @torch.no_grad()
    def symmetry_diagnostics(self, pi: ActionDist, action: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Learner entropy and how often agents pick the same value (the agents' symmetry).

        ``learner_entropy``: mean entropy of the learners' per-agent distributions
        (of the Gaussian before squashing for continuous actions). Discrete actions
        with at least 2 agents add ``learner_action_agreement`` (the chance that two
        agents' independent samples agree, :func:`expected_agreement`: what sampled
        evaluation sees), ``learner_greedy_agreement`` (the fraction of agent pairs
        whose greedy picks agree: what deterministic evaluation plays) and
        ``guider_action_agreement`` (the fraction of agent pairs whose collected,
        guider-sampled actions agree). All are means over the minibatch.
        """
        out = {"learner_entropy": pi.entropy().mean()}
        if self.continuous or action.shape[-1] < 2:
            return out
        logits = pi.logits.detach()
        out["learner_action_agreement"] = expected_agreement(logits.exp())
        out["learner_greedy_agreement"] = action_agreement(logits.argmax(-1))
        out["guider_action_agreement"] = action_agreement(action)
        return out


# ------------------------------------------------------------------ the algorithm
class Magpo(Algorithm):
    """Multi-Agent Guided Policy Optimization (paper 003, sec. 4).

    Args:
        delta: double-clip / mask bound (eqs. 9-10), > 1.
        aux_lambda: lambda of eq. 11 (weight of the learner's PPO term), >= 0.
        clip_epsilon: PPO clip epsilon (eqs. 10, 11).
        entropy_coef: guider entropy bonus.
        critic_coef: weight of the guider's value loss.
        loss_critic_type: ``l2``, ``smooth_l1`` or ``l1``.
        clip_value: PPO-style clipping of the value loss around the stored values.
        lmbda: GAE lambda.
        normalize_advantage: standardise advantages per minibatch.
        guider_input: ``auto`` (the global state when the task has one, else all
            observations), ``state``, ``observation`` or ``both``.
        agent_order: ``shuffle`` (new order each iteration), ``shuffle_step`` or ``fixed``.
        embed_dim, n_heads, n_blocks: the guider transformer's size.
        guider_input_norm: the guider's input normalisation (``running``,
            ``layernorm``, ``rmsnorm`` or ``none``, see
            :class:`~benchmarl_decentral.nn.mat.MultiAgentTransformer`).
        learner_agent_id: append a one-hot agent id to each learner's observation.
        learner_share_params: share learner parameters within a group; ``None``
            follows ``experiment.share_policy_params`` (as MAPPO).
        scale_mapping: positive map of the learner's Gaussian scale (continuous).
        use_tanh_normal: squash Gaussian actions into the action bounds (continuous).
    """

    def __init__(
        self,
        *,
        delta: float,
        aux_lambda: float,
        clip_epsilon: float,
        entropy_coef: float,
        critic_coef: float,
        loss_critic_type: str,
        clip_value: bool,
        lmbda: float,
        normalize_advantage: bool,
        guider_input: str,
        agent_order: str,
        embed_dim: int,
        n_heads: int,
        n_blocks: int,
        learner_agent_id: bool,
        guider_input_norm: str = "layernorm",
        learner_share_params: Optional[bool],
        scale_mapping: str,
        use_tanh_normal: bool,
        evaluation_dropout: Optional[List[int]] = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.evaluation_dropout = list(evaluation_dropout or [])  # run by evaluation_dropout.DropoutEvaluation
        self.delta, self.aux_lambda, self.clip_epsilon = delta, aux_lambda, clip_epsilon
        self.entropy_coef, self.critic_coef = entropy_coef, critic_coef
        self.loss_critic_type, self.clip_value, self.lmbda = loss_critic_type, clip_value, lmbda
        self.normalize_advantage = normalize_advantage
        self.agent_order = agent_order
        self.embed_dim, self.n_heads, self.n_blocks = embed_dim, n_heads, n_blocks
        self.guider_input_norm = guider_input_norm
        self.learner_agent_id = learner_agent_id
        self.learner_share_params = (
            self.experiment_config.share_policy_params if learner_share_params is None else learner_share_params
        )
        self.scale_mapping, self.use_tanh_normal = scale_mapping, use_tanh_normal

        # Everything that depends on the task is checked before any training.
        exp = self.experiment
        if self.experiment_config.collect_with_grad:
            raise config_error(
                exp, "magpo collects with the guider through BenchMARL's collector and evaluates with the "
                "learner; experiment.collect_with_grad=true would collect with the learner. Set "
                "experiment.collect_with_grad=false."
            )
        if guider_input == "auto":
            guider_input = "state" if self.state_spec is not None else "observation"
        if guider_input in ("state", "both") and self.state_spec is None:
            raise config_error(
                exp, f"magpo: guider_input={guider_input} but task {exp.task.name.lower()} provides no "
                "global state; set algorithm.guider_input=observation (or auto)."
            )
        self.guider_input = guider_input
        for group in self.group_map:
            spec = self.action_spec[group, "action"]
            if isinstance(spec, OneHot):
                raise config_error(
                    exp, f"magpo needs index (categorical) discrete actions, but group '{group}' has one-hot "
                    "actions; use the task's categorical action option (e.g. VMAS categorical_actions=true)."
                )

        self._guiders: Dict[str, MultiAgentTransformer] = {}
        self._pending_inputs: Dict[str, torch.Tensor] = {}  # guider inputs of the batch being trained on
        self._inputs: Dict[str, GuiderInputs] = {}
        self.orders: Dict[str, AgentOrder] = {}
        self._learner_nets: Dict[str, TensorDictModule] = {}

        self.callback = _MagpoCallback(self)
        # hydra runs pass callbacks=() (a tuple): rebind rather than append
        self.experiment.callbacks = [*self.experiment.callbacks, self.callback]
        self.callback.experiment = self.experiment

    # ----------------------------------------------------------------- specs
    def _continuous(self, group: str) -> bool:
        return not isinstance(self.action_spec[group, "action"], (Categorical, OneHot))

    def _bounds(self, group: str) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Action bounds ``(n, d)`` when Gaussians are squashed, else ``(None, None)``."""
        if not self._continuous(group) or not self.use_tanh_normal:
            return None, None
        space = self.action_spec[group, "action"].space
        return space.low.to(self.device), space.high.to(self.device)

    def _mask_key(self, group: str) -> Optional[Tuple[str, str]]:
        if self.action_mask_spec is not None and group in self.action_mask_spec.keys():
            return (group, "action_mask")
        return None

    # ----------------------------------------------------------------- guider
    def guider(self, group: str) -> MultiAgentTransformer:
        """The group's guider (built once; shared by the collection policy and the loss)."""
        if group not in self._guiders:
            n = len(self.group_map[group])
            inputs = GuiderInputs(
                group, n, self.observation_spec[group], self.state_spec, self.guider_input, self._mask_key(group)
            )
            spec = self.action_spec[group, "action"]
            continuous = self._continuous(group)
            low, high = self._bounds(group)
            self._inputs[group] = inputs
            self._guiders[group] = MultiAgentTransformer(
                n_agents=n,
                input_dim=inputs.input_dim,
                action_dim=spec.shape[-1] if continuous else spec.space.n,
                discrete=not continuous,
                embed_dim=self.embed_dim,
                n_heads=self.n_heads,
                n_blocks=self.n_blocks,
                input_norm=self.guider_input_norm,
                action_low=low,
                action_high=high,
            ).to(self.device)
            seed = int(self.experiment.seed) * 1000 + len(self.orders)
            self.orders[group] = AgentOrder(n, self.agent_order, seed).to(self.device)
        return self._guiders[group]

    # ----------------------------------------------------------------- learner
    def _get_policy_for_loss(self, group: str, model_config: ModelConfig, continuous: bool) -> TensorDictModule:
        n = len(self.group_map[group])
        spec = self.action_spec[group, "action"]
        obs_spec = self.observation_spec[group].clone().to(self.device)
        modules: List[TensorDictModule] = []
        if self.learner_agent_id:
            first_key, first_leaf = next(iter(obs_spec.items(True, True)))
            first_key = first_key if isinstance(first_key, tuple) else (first_key,)
            modules.append(
                TensorDictModule(
                    _AgentIdOneHot(n, len(first_leaf.shape) - 1).to(self.device),
                    in_keys=[(group, *first_key)],
                    out_keys=[(group, AGENT_ID_KEY)],
                )
            )
            obs_spec[AGENT_ID_KEY] = Unbounded(shape=(n, n), device=self.device)
        out_shape = (*spec.shape[:-1], 2 * spec.shape[-1]) if continuous else (*spec.shape, spec.space.n)
        modules.append(
            model_config.get_model(
                input_spec=Composite({group: obs_spec}),
                output_spec=Composite({group: Composite({"logits": Unbounded(shape=out_shape)}, shape=(n,))}),
                agent_group=group,
                input_has_agent_dim=True,
                n_agents=n,
                centralised=False,  # each agent reads only its own observation (sec. 4.1)
                share_params=self.learner_share_params,
                device=self.device,
                action_spec=self.action_spec,
            )
        )
        if continuous:
            modules.append(
                TensorDictModule(
                    NormalParamExtractor(scale_mapping=self.scale_mapping),
                    in_keys=[(group, "logits")],
                    out_keys=[(group, "loc"), (group, "scale")],
                )
            )
        net = TensorDictSequential(*modules)
        self._learner_nets[group] = net
        mask_key = self._mask_key(group)
        if continuous:
            low, high = self._bounds(group)
            return ProbabilisticActor(
                module=net,
                spec=spec,
                in_keys=[(group, "loc"), (group, "scale")],
                out_keys=[(group, "action")],
                distribution_class=TanhNormal if self.use_tanh_normal else IndependentNormal,
                distribution_kwargs={"low": low, "high": high} if self.use_tanh_normal else {},
            )
        if mask_key is None:
            return ProbabilisticActor(
                module=net, spec=spec, in_keys=[(group, "logits")], out_keys=[(group, "action")],
                distribution_class=TorchCategorical,
            )
        return ProbabilisticActor(
            module=net, spec=spec, in_keys={"logits": (group, "logits"), "mask": mask_key},
            out_keys=[(group, "action")], distribution_class=MaskedCategorical,
        )

    def get_deployment_policy(self) -> TensorDictSequential:
        """The learners of all groups: the policy to evaluate and deploy (never the guider)."""
        return TensorDictSequential(*[self.get_policy_for_loss(group) for group in self.group_map])

    # ----------------------------------------------------------------- BenchMARL hooks
    def _get_policy_for_collection(self, policy_for_loss, group: str, continuous: bool) -> TensorDictModuleBase:
        guider = self.guider(group)
        return GuiderPolicy(guider, self._inputs[group], self.orders[group], group)

    def _get_loss(self, group: str, policy_for_loss: TensorDictModule, continuous: bool) -> Tuple[LossModule, bool]:
        guider = self.guider(group)
        low, high = self._bounds(group)
        loss = MagpoLoss(
            guider=guider,
            inputs=self._inputs[group],
            learner=self._learner_nets[group],
            group=group,
            continuous=continuous,
            action_low=low,
            action_high=high,
            delta=self.delta,
            aux_lambda=self.aux_lambda,
            clip_epsilon=self.clip_epsilon,
            entropy_coef=self.entropy_coef,
            critic_coef=self.critic_coef,
            loss_critic_type=self.loss_critic_type,
            clip_value=self.clip_value,
            normalize_advantage=self.normalize_advantage,
        )
        return loss, False

    def _get_parameters(self, group: str, loss: MagpoLoss) -> Dict[str, Iterable]:
        return {
            "loss_guider": list(loss.guider.parameters()),
            "loss_learner": list(loss.learner.parameters()),
        }

    def process_batch(self, group: str, batch: TensorDictBase) -> TensorDictBase:
        """Per-agent reward/done and GAE on the guider's value (sec. 4.2)."""
        group_shape = batch.get(group).shape
        for key in ("done", "terminated", "reward"):
            nested = ("next", group, key)
            if nested not in batch.keys(True, True):
                batch.set(nested, batch.get(("next", key)).unsqueeze(-1).expand(*group_shape, 1))
        guider, inputs = self.guider(group), self._inputs[group]
        x = inputs(batch)[0]
        # guider_input_norm=running: this batch's inputs are folded into the statistics after
        # the update (_MagpoCallback.on_train_end), so that the update sees the normalisation
        # the batch was collected with (its stored log-probs and the PPO ratio agree)
        self._pending_inputs[group] = x.detach()
        with torch.no_grad():
            value = guider.value(x)
            next_value = guider.value(inputs(batch.get("next"))[0])
        advantage, value_target = vec_generalized_advantage_estimate(
            self.experiment_config.gamma,
            self.lmbda,
            value,
            next_value,
            batch.get(("next", group, "reward")),
            batch.get(("next", group, "done")),
            batch.get(("next", group, "terminated")),
            time_dim=batch.ndim - 1,
        )
        batch.set((group, "state_value"), value)
        batch.set((group, "advantage"), advantage)
        batch.set((group, "value_target"), value_target)
        self.orders[group].reshuffle()  # the next collection (and its update) uses a new order
        return batch


class _MagpoCallback(Callback):
    """Deployment routing (learners only) and checkpointing of the order generator."""

    def __init__(self, algorithm: Magpo):
        super().__init__()
        self.algorithm = algorithm

    def on_setup(self):
        exp = self.experiment
        # The collector already holds the guider (built in _setup_collector); from
        # here on, the experiment's policy is the decentralized learner.
        exp.policy = self.algorithm.get_deployment_policy()
        exp.group_policies = {group: self.algorithm.get_policy_for_loss(group) for group in exp.group_map}

    def on_train_end(self, training_td: TensorDictBase, group: str):
        # the batch just trained on joins the guider's running input statistics (a no-op unless
        # guider_input_norm=running); the next collection uses them
        x = self.algorithm._pending_inputs.pop(group, None)
        if x is not None:
            self.algorithm.guider(group).update_input_stats(x)

    def on_state_dict(self, state_dict: Dict[str, Any]):
        state_dict["magpo"] = {
            group: {"generator": order.generator.get_state(), "current": order.current.clone()}
            for group, order in self.algorithm.orders.items()
        }

    def on_load_state_dict(self, state_dict: Dict[str, Any]):
        for group, state in state_dict.get("magpo", {}).items():
            order = self.algorithm.orders.get(group)
            if order is not None:
                order.generator.set_state(state["generator"])
                order.current.copy_(state["current"])


def _given(value: Any) -> bool:
    """False for a field hydra has not filled yet (``MISSING`` / ``"???"``)."""
    return value is not MISSING and value != "???"


@dataclass
class MagpoConfig(AlgorithmConfig):
    """Configuration of :class:`Magpo` (defaults: ``conf/algorithm/magpo.yaml``, paper 003 sec. 4, C.3)."""

    # MAGPO (eqs. 9-12)
    delta: float = MISSING
    aux_lambda: float = MISSING
    clip_epsilon: float = MISSING
    # guider (PPO with a value head)
    entropy_coef: float = MISSING
    critic_coef: float = MISSING
    loss_critic_type: str = MISSING
    clip_value: bool = MISSING
    lmbda: float = MISSING
    normalize_advantage: bool = MISSING
    guider_input: str = MISSING
    agent_order: str = MISSING
    embed_dim: int = MISSING
    n_heads: int = MISSING
    n_blocks: int = MISSING
    guider_input_norm: str = MISSING
    # learner
    learner_agent_id: bool = MISSING
    learner_share_params: Optional[bool] = MISSING
    scale_mapping: str = MISSING
    use_tanh_normal: bool = MISSING
    # evaluation (benchmarl_decentral.evaluation_dropout)
    evaluation_dropout: List[int] = field(default_factory=list)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Checks that need no task; the task-dependent ones run when the algorithm is built."""
        self.evaluation_dropout = check_evaluation_dropout(
            type(self).associated_class().__name__.lower(), self.evaluation_dropout
        )
        if _given(self.delta):
            check_delta(self.delta)
        if _given(self.aux_lambda):
            check_lambda(self.aux_lambda)
        if isinstance(self.clip_epsilon, (int, float)) and not 0 < self.clip_epsilon < 1:
            raise ValueError(f"magpo: clip_epsilon must be in (0, 1), got {self.clip_epsilon}; the paper uses 0.2.")
        if isinstance(self.loss_critic_type, str) and self.loss_critic_type not in VALUE_LOSSES:
            raise ValueError(
                f"magpo: unknown loss_critic_type '{self.loss_critic_type}'; choose one of {list(VALUE_LOSSES)}."
            )
        if isinstance(self.guider_input, str) and self.guider_input not in GUIDER_INPUTS:
            raise ValueError(
                f"magpo: unknown guider_input '{self.guider_input}'; choose one of {list(GUIDER_INPUTS)}."
            )
        if isinstance(self.guider_input_norm, str) and self.guider_input_norm not in INPUT_NORMS:
            raise ValueError(
                f"magpo: unknown guider_input_norm '{self.guider_input_norm}'; choose one of {list(INPUT_NORMS)} "
                "(running: per-feature running mean/std; layernorm: MAT's; rmsnorm: the public MAGPO code's)."
            )
        if isinstance(self.agent_order, str) and self.agent_order not in AGENT_ORDERS:
            raise ValueError(f"magpo: unknown agent_order '{self.agent_order}'; choose one of {list(AGENT_ORDERS)}.")
        for name in ("embed_dim", "n_heads", "n_blocks"):
            value = getattr(self, name)
            if _given(value) and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"magpo: {name} must be an integer >= 1, got {value!r}.")
        if isinstance(self.embed_dim, int) and isinstance(self.n_heads, int) and self.embed_dim % self.n_heads:
            raise ValueError(
                f"magpo: embed_dim ({self.embed_dim}) must be divisible by n_heads ({self.n_heads}); "
                "e.g. embed_dim=64 with n_heads in {1, 2, 4}."
            )

    @staticmethod
    def associated_class() -> Type[Algorithm]:
        return Magpo

    @classmethod
    def get_from_yaml(cls, path: Optional[str] = None) -> "MagpoConfig":
        """Load our ``conf/algorithm/magpo.yaml`` (BenchMARL's loader only reads its own folder)."""
        return cls(**load_algorithm_yaml("magpo", path))

    @staticmethod
    def supports_continuous_actions() -> bool:
        return True

    @staticmethod
    def supports_discrete_actions() -> bool:
        return True

    @staticmethod
    def on_policy() -> bool:
        return True

    @staticmethod
    def has_centralized_critic() -> bool:
        return True


# ------------------------------------------------------------------ the paper preset
class MagpoPaper(Magpo):
    """:class:`Magpo` run from the paper preset (``conf/algorithm/magpo_paper.yaml``).

    The same algorithm; a subclass only so that BenchMARL, which names runs after
    ``associated_class().__name__.lower()``, names these ``magpo_paper`` and a sweep
    over ``algorithm=magpo,magpo_paper`` keeps the two apart.
    """


MagpoPaper.__name__ = "Magpo_paper"  # run name "magpo_paper", the hydra name (pickling uses __qualname__)


@dataclass
class MagpoPaperConfig(MagpoConfig):
    """The paper's tuned MAGPO for CoordSum-5x20-80 (paper 003 App. C.3, Table 7; the public
    code's ``params.csv``): ``delta`` 1.1, ``aux_lambda`` 4, 2 heads, 2 blocks, width 64.

    Loaded from ``conf/algorithm/magpo_paper.yaml``; the experiment half of the preset
    (15 epochs x 8 minibatches, lr, 64 envs x 128 steps, sampled evaluation) is
    ``conf/experiment/magpo_paper.yaml`` (``experiment=magpo_paper``).
    """

    @staticmethod
    def associated_class() -> Type[Algorithm]:
        return MagpoPaper

    @classmethod
    def get_from_yaml(cls, path: Optional[str] = None) -> "MagpoPaperConfig":
        """Load our ``conf/algorithm/magpo_paper.yaml`` (or ``path``)."""
        return cls(**load_algorithm_yaml("magpo_paper", path))
