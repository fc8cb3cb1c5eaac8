"""MAGPO (paper 003 sec. 4) on real BenchMARL experiments: CoordSum, VMAS, PettingZoo; tiny sizes, CPU."""

from __future__ import annotations

import json

import pytest
import torch
from torchrl.envs.utils import ExplorationType, set_exploration_type

from benchmarl_decentral.algorithms import Magpo, MagpoConfig

from conftest import make_experiment, run_cli

GROUP = "agents"
COORDSUM = "coordsum/3x10-30"


def _magpo(tmp_path, task=COORDSUM, **kwargs):
    return make_experiment(tmp_path, algorithm="magpo", task=task, **kwargs)


def _batch(exp, group=GROUP):
    """One collected batch, processed by the algorithm (GAE), shape (n_envs, T)."""
    batch = next(iter(exp.collector))
    batch = batch.exclude(*exp._get_excluded_keys(group))
    return exp.algorithm.process_batch(group, batch)


class _GuiderCalls:
    """Counts every use of the guider (its first layer runs in sampling, teacher forcing and values)."""

    def __init__(self, guider):
        self.n = 0
        self.handle = guider.token.register_forward_hook(self._hook)

    def _hook(self, *args):
        self.n += 1


# ------------------------------------------------------------------ structure
def test_two_optimizers_on_disjoint_networks(tmp_path):
    exp = _magpo(tmp_path)
    algo = exp.algorithm
    guider = {id(p) for p in algo.guider(GROUP).parameters()}
    learner = {id(p) for p in algo.get_policy_for_loss(GROUP).parameters()}
    assert set(exp.optimizers[GROUP]) == {"loss_guider", "loss_learner"}
    opt_params = {k: {id(p) for g in o.param_groups for p in g["params"]} for k, o in exp.optimizers[GROUP].items()}
    assert opt_params["loss_guider"] == guider and opt_params["loss_learner"] == learner
    assert not guider & learner
    # the deployed / evaluated policy holds no guider parameter; the collector holds the guider
    assert not {id(p) for p in exp.policy.parameters()} & guider
    assert {id(p) for p in exp.collector.policy.parameters()} == guider
    exp.close()


def test_each_loss_reaches_only_its_own_network(tmp_path):
    exp = _magpo(tmp_path)
    algo = exp.algorithm
    batch = _batch(exp).reshape(-1)
    guider = list(algo.guider(GROUP).parameters())
    learner = list(algo.get_policy_for_loss(GROUP).parameters())
    for key, reached, untouched in (("loss_guider", guider, learner), ("loss_learner", learner, guider)):
        for p in guider + learner:
            p.grad = None
        exp.losses[GROUP](batch)[key].backward()
        assert all(p.grad is None for p in untouched), key
        assert sum(float(p.grad.abs().sum()) for p in reached if p.grad is not None) > 0, key
    # BenchMARL's own optimizer loop: one backward per loss key, no shared graph
    exp.replay_buffers[GROUP].extend(batch)
    training_td = exp._optimizer_loop(GROUP)
    for key in ("loss_guider", "loss_learner", "guider_kl", "guider_kl_mask_fraction", "learner_kl"):
        assert torch.isfinite(training_td[key]), key
    exp.close()


def test_data_is_collected_by_the_guider_and_gae_uses_its_value(tmp_path):
    exp = _magpo(tmp_path, task_overrides={"max_steps": 7})  # episodes end inside the batch
    algo = exp.algorithm
    guider, inputs = algo.guider(GROUP), algo._inputs[GROUP]
    batch = _batch(exp)
    x, mask = inputs(batch)
    with torch.no_grad():
        dist, value = guider(x, batch[GROUP, "action"], batch[GROUP, "magpo_rank"], mask)
        next_value = guider.value(inputs(batch["next"])[0])
    # stored log-probs are the guider's per-agent conditionals, values are the guider's
    torch.testing.assert_close(batch[GROUP, "log_prob"], dist.log_prob(batch[GROUP, "action"]), rtol=0, atol=1e-5)
    torch.testing.assert_close(batch[GROUP, "state_value"], value)
    # GAE (gamma, lambda) against a plain backward loop, per env and agent
    gamma, lmbda = exp.config.gamma, algo.lmbda
    reward = batch["next", GROUP, "reward"]
    done = batch["next", GROUP, "done"].float()
    terminated = batch["next", GROUP, "terminated"].float()
    assert done.sum() > 0
    expected = torch.zeros_like(value)
    running = torch.zeros_like(value[:, 0])
    for t in reversed(range(value.shape[1])):
        td_error = reward[:, t] + gamma * next_value[:, t] * (1 - terminated[:, t]) - value[:, t]
        running = td_error + gamma * lmbda * (1 - done[:, t]) * running
        expected[:, t] = running
    torch.testing.assert_close(batch[GROUP, "advantage"], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batch[GROUP, "value_target"], expected + value, rtol=1e-5, atol=1e-5)
    exp.close()


def test_learner_entropy_and_action_agreement_are_logged(tmp_path):
    import math

    from benchmarl_decentral.nn.mat import ActionDist

    exp = _magpo(tmp_path)  # coordsum/3x10-30: 3 agents, 10 actions, fresh (near-uniform) networks
    batch = _batch(exp).reshape(-1)
    exp.replay_buffers[GROUP].extend(batch)
    td = exp._optimizer_loop(GROUP)  # what BenchMARL logs as train/agents/<key>
    assert td["learner_entropy"].item() == pytest.approx(math.log(10), abs=0.1)
    assert td["learner_action_agreement"].item() == pytest.approx(0.1, abs=0.02)  # 1/|A| for uniform picks
    assert 0 <= td["learner_greedy_agreement"].item() <= 1
    assert td["guider_action_agreement"].item() == pytest.approx(0.1, abs=0.1)  # sampled: noisy
    # a symmetric deterministic team (every learner plays 7) against one that splits 3/4/5
    loss = exp.losses[GROUP]
    n = batch.shape[0]
    logits = torch.full((n, 3, 10), -30.0)
    logits[..., 7] = 30.0
    symmetric = loss.symmetry_diagnostics(ActionDist.categorical(logits), torch.full((n, 3), 7))
    assert symmetric["learner_entropy"].item() == pytest.approx(0.0, abs=1e-6)
    assert symmetric["learner_action_agreement"].item() == pytest.approx(1.0)
    assert symmetric["learner_greedy_agreement"].item() == symmetric["guider_action_agreement"].item() == 1.0
    split = torch.full((n, 3, 10), -30.0)
    split[:, torch.arange(3), torch.tensor([3, 4, 5])] = 30.0
    split = loss.symmetry_diagnostics(ActionDist.categorical(split), torch.tensor([3, 4, 5]).expand(n, 3))
    assert split["learner_action_agreement"].item() == pytest.approx(0.0, abs=1e-6)
    assert split["learner_greedy_agreement"].item() == split["guider_action_agreement"].item() == 0.0
    exp.close()


# ------------------------------------------------------------------ deployment
def _evaluate_counting_guider_calls(exp):
    """Run one BenchMARL evaluation; ``(guider calls, the evaluation rollouts as logged)``."""
    calls = _GuiderCalls(exp.algorithm.guider(GROUP))
    rollouts = []
    recorder = exp.logger.log_evaluation
    exp.logger.log_evaluation = lambda r, **kw: (rollouts.extend(r), recorder(r, **kw))
    exp._evaluation_loop()
    return calls, rollouts


def test_evaluation_never_calls_the_guider_and_acts_with_the_learner(tmp_path):
    exp = _magpo(tmp_path, evaluation=True, create_json=True)
    algo = exp.algorithm
    calls, rollouts = _evaluate_counting_guider_calls(exp)
    assert calls.n == 0
    assert len(rollouts) == exp.config.evaluation_episodes
    # the evaluated actions are the learner's (deterministic evaluation: its mode)
    learner = algo._learner_nets[GROUP]
    for rollout in rollouts:
        with torch.no_grad():
            logits = learner(rollout.clone())[GROUP, "logits"]
        torch.testing.assert_close(rollout[GROUP, "action"], logits.argmax(-1))
    next(iter(exp.collector))  # collection, on the other hand, samples from the guider
    assert calls.n > 0
    exp.close()


def test_sampled_evaluation_samples_the_learner(tmp_path):
    """The paper's protocol (public code: evaluation_greedy False): evaluation samples the learner."""
    exp = _magpo(tmp_path, evaluation=True, evaluation_deterministic_actions=False, evaluation_episodes=3)
    algo = exp.algorithm
    calls, rollouts = _evaluate_counting_guider_calls(exp)
    assert calls.n == 0 and len(rollouts) == 3
    learner = algo._learner_nets[GROUP]
    actions, modes, probs = [], [], []
    for rollout in rollouts:
        with torch.no_grad():
            logits = learner(rollout.clone())[GROUP, "logits"]
        actions.append(rollout[GROUP, "action"].reshape(-1))
        modes.append(logits.argmax(-1).reshape(-1))
        probs.append(logits.softmax(-1).reshape(-1, 10))
    actions, modes, probs = torch.cat(actions), torch.cat(modes), torch.cat(probs)
    # 900 picks of a fresh, near-uniform learner over 10 actions: sampled, not its mode ...
    assert (actions == modes).float().mean() < 0.3
    # ... and drawn from it: the mean probability of the picked action matches E[p(a)] = sum_a p(a)^2
    picked = probs.gather(-1, actions.unsqueeze(-1)).mean()
    assert picked.item() == pytest.approx(probs.square().sum(-1).mean().item(), rel=0.05)
    assert len(actions.unique()) == 10
    exp.close()


@pytest.mark.parametrize("task", [COORDSUM, "vmas/balance"])
def test_deployed_output_of_agent_i_ignores_other_agents_and_the_state(tmp_path, task):
    exp = _magpo(tmp_path, task=task, task_overrides={"n_agents": 3} if task.startswith("vmas") else None)
    policy = exp.policy
    assert "state" not in policy.in_keys
    td = exp.test_env.reset()
    continuous = task.startswith("vmas")
    out_key = (GROUP, "loc") if continuous else (GROUP, "logits")
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        base = policy(td.clone())
        other = td.clone()
        obs = other[GROUP, "observation"]
        obs[..., 1:, :] = torch.randn_like(obs[..., 1:, :]) * 5
        if "state" in other.keys():
            other["state"] = torch.rand_like(other["state"])
        moved = policy(other)
    torch.testing.assert_close(moved[out_key][..., 0, :], base[out_key][..., 0, :])
    torch.testing.assert_close(moved[GROUP, "action"][:, 0], base[GROUP, "action"][:, 0])
    assert not torch.allclose(moved[out_key][..., 1:, :], base[out_key][..., 1:, :])
    exp.close()


def test_reloaded_experiment_evaluates_with_the_learner(tmp_path):
    from benchmarl.experiment import Experiment

    exp = _magpo(tmp_path, checkpoint_at_end=True, evaluation=True, create_json=True)
    exp.run()
    (checkpoint,) = tmp_path.rglob("checkpoints/checkpoint_*.pt")
    state = torch.load(checkpoint, weights_only=False)
    assert "magpo" in state  # the order generator is checkpointed
    saved = {k: v.clone() for k, v in exp.algorithm.guider(GROUP).state_dict().items()}
    reloaded = Experiment.reload_from_file(str(checkpoint))
    guider = reloaded.algorithm.guider(GROUP)
    for k, v in guider.state_dict().items():
        torch.testing.assert_close(v, saved[k])
    torch.testing.assert_close(reloaded.algorithm.orders[GROUP].current, exp.algorithm.orders[GROUP].current)
    calls = _GuiderCalls(guider)
    reloaded.evaluate()
    assert calls.n == 0
    reloaded.close()


# ------------------------------------------------------------------ options
@pytest.mark.parametrize("mode", ["shuffle", "shuffle_step", "fixed"])
def test_agent_order_modes(tmp_path, mode):
    exp = _magpo(tmp_path, task="coordsum/5x20-80", algorithm_overrides={"agent_order": mode}, max_n_iters=4)
    orders = []
    for batch in exp.collector:
        batch = exp.algorithm.process_batch(GROUP, batch.exclude(*exp._get_excluded_keys(GROUP)))
        rank = batch[GROUP, "magpo_rank"].reshape(-1, 5)
        assert torch.equal(rank.sort(-1).values, torch.arange(5).expand_as(rank))  # permutations
        orders.append({tuple(r.tolist()) for r in rank})
    assert len(orders) == 4
    if mode == "fixed":
        assert all(o == {(0, 1, 2, 3, 4)} for o in orders)
    elif mode == "shuffle":  # one order per batch (update), a new one for the next
        assert all(len(o) == 1 for o in orders)
        assert len(set.union(*orders)) > 1
    else:
        assert all(len(o) > 10 for o in orders)
    exp.close()


@pytest.mark.parametrize("share, expected_dim", [(True, None), (False, 3), (None, None)])
def test_learner_parameter_sharing(tmp_path, share, expected_dim):
    exp = _magpo(tmp_path, algorithm_overrides={"learner_share_params": share})
    learner = [p for p in exp.algorithm._learner_nets[GROUP].parameters()]
    if expected_dim is None:  # shared (MAPPO's default, also what null gives here)
        assert exp.algorithm.learner_share_params is True
        assert all(p.dim() <= 2 for p in learner)
    else:  # one learner per agent, stacked on a leading agent dim
        assert all(p.shape[0] == expected_dim for p in learner)
    exp.close()


def test_guider_and_learner_share_the_action_mask(tmp_path):
    exp = _magpo(tmp_path)
    algo, loss = exp.algorithm, exp.losses[GROUP]
    batch = _batch(exp).reshape(-1)
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(batch[GROUP, "action_mask"].shape, generator=g) > 0.5
    mask.scatter_(-1, batch[GROUP, "action"].unsqueeze(-1), True)  # stored actions stay allowed
    batch[GROUP, "action_mask"] = mask
    x, m = algo._inputs[GROUP](batch)
    mu, _ = algo.guider(GROUP)(x, batch[GROUP, "action"], batch[GROUP, "magpo_rank"], m)
    pi = loss.learner_dist(batch, m)
    for dist in (mu, pi):
        assert torch.all(dist.logits.exp()[~mask] == 0)
    assert torch.isfinite(mu.kl(pi)).all() and torch.isfinite(pi.kl(mu)).all()
    vals = loss(batch)
    assert torch.isfinite(vals["loss_guider"]) and torch.isfinite(vals["loss_learner"])
    # both policies also act within the mask
    td = exp.test_env.reset()
    td[GROUP, "action_mask"] = torch.zeros_like(td[GROUP, "action_mask"])
    td[GROUP, "action_mask"][..., 4] = True
    for policy in (exp.collector.policy, exp.policy):
        with torch.no_grad():
            assert torch.all(policy(td.clone())[GROUP, "action"] == 4)
    exp.close()


def test_continuous_actions_vmas_with_and_without_squashing(tmp_path):
    for tanh in (True, False):
        exp = _magpo(tmp_path, task="vmas/balance", task_overrides={"n_agents": 3},
                     algorithm_overrides={"use_tanh_normal": tanh})
        batch = _batch(exp)
        action = batch[GROUP, "action"]
        assert action.shape[-2:] == (3, 2) and action.is_floating_point()
        if tanh:
            spec = exp.action_spec[GROUP, "action"].space
            assert torch.all(action >= spec.low) and torch.all(action <= spec.high)
        exp.replay_buffers[GROUP].extend(batch.reshape(-1))
        training_td = exp._optimizer_loop(GROUP)
        for key in ("loss_guider", "loss_learner", "learner_entropy"):
            assert torch.isfinite(training_td[key])
        assert "learner_action_agreement" not in training_td.keys()  # discrete actions only
        exp.close()


def test_pettingzoo_discrete_and_learner_only_evaluation(tmp_path):
    exp = _magpo(tmp_path, task="pettingzoo/simple_spread", prefer_continuous_actions=False, evaluation=True)
    assert exp.state_spec is not None and exp.algorithm.guider_input == "state"
    (group,) = exp.group_map
    assert "Categorical" in type(exp.action_spec[group, "action"]).__name__
    calls = _GuiderCalls(exp.algorithm.guider(group))
    exp.run()
    assert exp.n_iters_performed == 2 and calls.n > 0
    n_training = calls.n
    exp._evaluation_loop()
    assert calls.n == n_training


# ------------------------------------------------------------------ the paper preset
PAPER_VALUES = {"delta": 1.1, "aux_lambda": 4.0, "n_heads": 2, "n_blocks": 2, "embed_dim": 64,
                "clip_epsilon": 0.2, "entropy_coef": 0.01, "critic_coef": 0.1, "lmbda": 0.9, "guider_input_norm": "rmsnorm"}


def test_paper_preset_loads_and_runs_one_iteration(tmp_path):
    from benchmarl_decentral.algorithms import MagpoPaperConfig

    config = MagpoPaperConfig.get_from_yaml()
    assert {k: getattr(config, k) for k in PAPER_VALUES} == PAPER_VALUES
    exp = make_experiment(tmp_path, algorithm="magpo_paper", task="coordsum/5x20-80",
                          task_overrides={"mode": "reference"}, max_n_iters=1, evaluation=True,
                          evaluation_deterministic_actions=False)
    assert exp.algorithm_name == "magpo_paper" and isinstance(exp.algorithm, Magpo)
    guider = exp.algorithm.guider(GROUP)
    assert len(guider.encoder) == len(guider.decoder) == 2 and guider.encoder[0].attn.n_heads == 2
    assert isinstance(guider.token[0], torch.nn.RMSNorm)  # the public code's input norm
    assert exp.observation_spec[GROUP, "observation"].shape == (5, 1 + 5)  # raw target + agent id
    calls = _GuiderCalls(guider)
    exp.run()  # one iteration, then one sampled evaluation of the learners
    assert exp.n_iters_performed == 1 and calls.n > 0
    n_training = calls.n
    exp._evaluation_loop()
    assert calls.n == n_training
    exp.close()


def test_paper_experiment_preset_composes_with_the_documented_values():
    from benchmarl.hydra_config import load_algorithm_config_from_hydra, load_experiment_config_from_hydra
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="benchmarl.conf", version_base=None):
        cfg = compose(config_name="config", overrides=[
            "algorithm=magpo_paper", "experiment=magpo_paper", "task=coordsum/5x20-80", "task.mode=reference"])
    algorithm = load_algorithm_config_from_hydra(cfg.algorithm)
    assert {k: getattr(algorithm, k) for k in PAPER_VALUES} == PAPER_VALUES
    experiment = load_experiment_config_from_hydra(cfg.experiment)
    assert (experiment.on_policy_n_minibatch_iters, experiment.on_policy_collected_frames_per_batch
            // experiment.on_policy_minibatch_size) == (15, 8)  # 15 epochs x 8 minibatches
    assert experiment.on_policy_n_envs_per_worker == 64 and experiment.lr == 0.0005
    assert experiment.evaluation_deterministic_actions is False and experiment.evaluation_episodes == 32
    assert experiment.max_n_frames == 20_000_000 and experiment.max_n_iters is None
    experiment.validate(on_policy=True)  # BenchMARL's own consistency checks (evaluation interval etc.)
    assert cfg.task.mode == "reference"


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"delta": 1.0}, "delta must be > 1"),
        ({"delta": 0.8}, "delta must be > 1"),
        ({"aux_lambda": -0.5}, r"aux_lambda \(lambda of eq. 11\) must be >= 0"),
        ({"clip_epsilon": 1.5}, "clip_epsilon must be in"),
        ({"guider_input": "pixels"}, "unknown guider_input 'pixels'"),
        ({"agent_order": "reverse"}, "unknown agent_order 'reverse'"),
        ({"guider_input_norm": "batchnorm"}, "unknown guider_input_norm 'batchnorm'"),
        ({"embed_dim": 30, "n_heads": 4}, "divisible by n_heads"),
        ({"loss_critic_type": "huber"}, "unknown loss_critic_type"),
    ],
)
def test_config_errors(overrides, match):
    from benchmarl_decentral.algorithms import MagpoPaperConfig

    for config in (MagpoConfig, MagpoPaperConfig):  # the preset goes through the same checks
        kwargs = {**config.get_from_yaml().__dict__, **overrides}
        with pytest.raises(ValueError, match=match):
            config(**kwargs)


@pytest.mark.parametrize("norm", ["running", "layernorm", "rmsnorm", "none"])
def test_guider_input_norm_modes(tmp_path, norm):
    """The running norm's statistics change only after an update, by exactly the tokens trained
    on: collection and the update of one batch use the same normalisation (the stored log-probs
    are the guider's at the start of the update)."""
    from benchmarl_decentral.nn.mat import RunningInputNorm

    exp = _magpo(tmp_path, task="coordsum/5x20-80", task_overrides={"mode": "reference"},
                 algorithm_overrides={"guider_input_norm": norm})
    guider, inputs = exp.algorithm.guider(GROUP), exp.algorithm._inputs[GROUP]
    first = guider.token[0]
    expected = {"running": RunningInputNorm, "layernorm": torch.nn.LayerNorm, "rmsnorm": torch.nn.RMSNorm,
                "none": torch.nn.Identity}[norm]
    assert type(first) is expected
    seen = []
    for iteration in range(2):
        batch = _batch(exp)  # collected and processed (GAE)
        x, mask = inputs(batch)
        seen.append(x.reshape(-1, x.shape[-1]))
        with torch.no_grad():
            dist, _ = guider(x, batch[GROUP, "action"], batch[GROUP, "magpo_rank"], mask)
        torch.testing.assert_close(batch[GROUP, "log_prob"], dist.log_prob(batch[GROUP, "action"]), rtol=0,
                                   atol=1e-5)
        if norm == "running":
            assert float(first.count) == iteration * x[..., 0, 0].numel() * x.shape[-2]
        exp.replay_buffers[GROUP].extend(batch.reshape(-1))
        training_td = exp._optimizer_loop(GROUP)
        assert torch.isfinite(training_td["loss_guider"])
        exp._on_train_end(training_td, GROUP)  # BenchMARL's call after a group's update
    if norm == "running":
        tokens = torch.cat(seen)
        assert float(first.count) == tokens.shape[0]
        torch.testing.assert_close(first.mean, tokens.mean(0), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(first.var, tokens.var(0, unbiased=False), rtol=1e-4, atol=1e-5)
        # the raw target (feature 0 in reference mode) keeps its spread after normalisation
        z = first(tokens)[:, 0]
        assert z.std() > 0.8 and z.min() < -1.0 and z.max() > 1.0
        # the statistics are checkpointed with the guider
        assert any(k.endswith("token.0.mean") for k in exp.state_dict()["loss_agents"].keys())
    exp.close()


def test_running_input_norm_merges_batches_like_one_batch():
    from benchmarl_decentral.nn.mat import RunningInputNorm

    x = torch.randn(500, 3, dtype=torch.float64).float() * torch.tensor([1.0, 10.0, 0.1]) + torch.tensor([5.0, -2.0, 0.0])
    norm = RunningInputNorm(3)
    for chunk in x.split([1, 99, 250, 150]):
        norm.update(chunk)
    torch.testing.assert_close(norm.mean, x.mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(norm.var, x.var(0, unbiased=False), rtol=1e-4, atol=1e-5)
    assert float(norm.count) == 500
    z = norm(x)
    torch.testing.assert_close(z.mean(0), torch.zeros(3), atol=1e-4, rtol=0)
    assert float(norm(torch.full((1, 3), 1e6)).max()) == norm.clip


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"task": "vmas/balance", "algorithm_overrides": {"guider_input": "state"}}, "provides no global state"),
        ({"collect_with_grad": True}, "collect_with_grad=false"),
    ],
)
def test_task_dependent_errors_before_training(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _magpo(tmp_path, **kwargs)
    assert list(tmp_path.iterdir()) == []  # no half-written run folder left behind


# ------------------------------------------------------------------ end to end (CLI)
def _ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


@pytest.mark.slow
def test_cli_coordsum_run_and_evaluate(tmp_path, tiny):
    _ok(run_cli(["run", "algorithm=magpo", f"task={COORDSUM}", "experiment.checkpoint_at_end=true", *tiny], tmp_path))
    (json_file,) = tmp_path.rglob("magpo_*.json")
    assert "magpo" in json.dumps(json.loads(json_file.read_text()))
    for name in ("train_agents_loss_guider", "train_agents_loss_learner", "train_agents_guider_kl_mask_fraction",
                 "train_agents_learner_entropy", "train_agents_learner_action_agreement",
                 "train_agents_learner_greedy_agreement", "train_agents_guider_action_agreement",
                 "eval_reward_episode_reward_mean"):
        assert list(tmp_path.rglob(f"scalars/{name}.csv")), name
    (checkpoint,) = tmp_path.rglob("checkpoints/checkpoint_*.pt")
    assert "Evaluation results logged" in _ok(run_cli(["evaluate", str(checkpoint)], tmp_path)).stdout


@pytest.mark.slow
def test_cli_vmas_continuous(tmp_path, tiny):
    result = _ok(run_cli(["run", "algorithm=magpo", "task=vmas/balance", "task.n_agents=3", *tiny], tmp_path))
    assert "Algorithm: magpo, Task: vmas/balance" in result.stdout
    assert list(tmp_path.rglob("scalars/eval_reward_episode_reward_mean.csv"))


@pytest.mark.slow
def test_cli_pettingzoo_simple_spread(tmp_path, tiny):
    _ok(run_cli(["run", "algorithm=magpo", "task=pettingzoo/simple_spread", *tiny], tmp_path))
    assert list(tmp_path.rglob("scalars/train_*_learner_kl.csv"))  # PettingZoo names its group "agent"


@pytest.mark.slow
def test_cli_bad_delta_fails_before_training(tmp_path, tiny):
    """Through hydra too (lambda < 0 takes the same path: MagpoConfig.validate, tested above)."""
    result = run_cli(["run", "algorithm=magpo", f"task={COORDSUM}", "algorithm.delta=1.0", *tiny], tmp_path)
    assert result.returncode != 0 and "delta must be > 1" in result.stderr and "algorithm.delta=1.5" in result.stderr
    assert not list(tmp_path.glob("outputs/*/*/magpo_*"))  # no run folder
