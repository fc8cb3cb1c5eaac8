"""`benchmarl report` on a real tiny sweep: reference policies, robust scores, learning verdicts, rewards.

Every value checked here is computed independently of the report's code: the
final scores and training returns from the run files (JSON, csv scalars), the
random and zero-action returns from VMAS itself (``vmas.make_env``, our own
rollout loop, another seed) or from CoordSum's rules in closed form.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("rliable")
pytest.importorskip("matplotlib")

from conftest import TINY, run_cli  # noqa: E402

from benchmarl_decentral.cli import main  # noqa: E402
from benchmarl_decentral.reporting.reference import (  # noqa: E402
    RandomPolicy,
    TaskSetup,
    ZeroPolicy,
    evaluate_policy,
    make_env,
    policy_names,
    SCRIPTED_POLICIES,
)
from benchmarl_decentral.reporting.scores import difference_ci, verdict  # noqa: E402

EPISODES = 10  # evaluation episodes per evaluation of the sweep
NAV = ["task.n_agents=2", "task.max_steps=20"]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def vmas_random_returns(task_config: dict, n_envs: int, seed: int) -> np.ndarray:
    """Uniform random actions on VMAS navigation through VMAS's own API: return per episode."""
    import vmas

    config = dict(task_config)
    max_steps = config.pop("max_steps")
    env = vmas.make_env("navigation", num_envs=n_envs, device="cpu", continuous_actions=True, seed=seed,
                        max_steps=max_steps, **config)
    env.reset()
    generator = torch.Generator().manual_seed(seed)
    total = torch.zeros(n_envs)
    alive = torch.ones(n_envs, dtype=torch.bool)
    for _ in range(max_steps):
        actions = []
        for agent in env.agents:
            u = float(agent.action.u_range)
            actions.append((torch.rand(n_envs, 2, generator=generator) * 2 - 1) * u)
        _, rewards, dones, _ = env.step(actions)
        total += torch.where(alive, torch.stack(rewards).mean(0), torch.zeros(n_envs))
        alive &= ~dones
    return total.numpy()


@pytest.mark.slow
def test_tiny_sweep_report_has_references_robust_scores_verdicts_and_rewards(tmp_path):
    sweep = tmp_path / "sweep"
    tiny = [o for o in TINY if not o.startswith("experiment.evaluation_episodes")]
    result = run_cli(["benchmark", "algorithm=mappo", "task=vmas/navigation", *NAV, "seed=0,1,2", *tiny,
                      f"experiment.evaluation_episodes={EPISODES}", "--out", str(sweep)], tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = tmp_path / "report"
    assert main(["report", str(sweep), "--out", str(out), "--reps", "200", "--last-k", "2"]) == 0

    # 1. robust final score = mean of the last 2 evaluations, from the JSON; training return from the CSVs
    runs = read_csv(out / "runs.csv")
    assert len(runs) == 3
    for row in runs:
        data = json.loads(open(row["source"]).read())["vmas"]["navigation"][row["algorithm"]][row["seed"]]
        steps = sorted((v for k, v in data.items() if k.startswith("step_")), key=lambda v: v["step_count"])
        assert len(steps) == 2 and all(len(s["return"]) == EPISODES for s in steps)
        expected = np.mean([np.mean(s["return"]) for s in steps[-2:]])
        assert float(row["score"]) == pytest.approx(expected, rel=1e-9)
        scalars = row["csv_scalars"]
        train = [float(line.split(",")[1]) for line in open(f"{scalars}/collection_reward_episode_reward_mean.csv")]
        assert float(row["train_return"]) == pytest.approx(np.mean(train), rel=1e-9)  # both iterations in the window

    # 2. reference rows: random, zero action, the scripted go-to-goal; 3 seeds x 2 x 10 episodes
    refs = {r["policy"]: r for r in read_csv(out / "reference_scores.csv")}
    assert set(refs) == {"random", "zero", "go_to_goal"}
    assert all(int(r["episodes"]) == 3 * 2 * EPISODES and r["task"] == "vmas/navigation" for r in refs.values())
    # zero action: nobody moves, no distance shaping, no collision (agents spawn apart): exactly 0
    assert float(refs["zero"]["mean"]) == 0.0
    # random: same distribution as VMAS's own environment under our own random loop (another seed, 400 episodes)
    task_config = {k: v for k, v in _hydra_task(sweep).items()}
    independent = vmas_random_returns(task_config, 400, seed=1234)
    ref_mean, ref_std, n = float(refs["random"]["mean"]), float(refs["random"]["std"]), int(refs["random"]["episodes"])
    standard_error = math.sqrt(ref_std ** 2 / n + independent.var(ddof=1) / independent.size)
    assert abs(ref_mean - independent.mean()) < 4 * standard_error, (ref_mean, independent.mean(), standard_error)
    assert float(refs["random"]["ci_low"]) < ref_mean < float(refs["random"]["ci_high"])
    assert float(refs["random"]["normalised_mean"]) == 0.0  # random = 0

    # 3. verdict per algorithm, consistent with the difference to random and its CI
    scores = {r["algorithm"]: r for r in read_csv(out / "task_scores.csv")}
    assert set(scores) == {"mappo"}
    for alg, row in scores.items():
        finals = [float(r["score"]) for r in runs if r["algorithm"] == alg]
        assert float(row["mean"]) == pytest.approx(np.mean(finals), rel=1e-9)
        assert float(row["minus_random"]) == pytest.approx(np.mean(finals) - ref_mean, rel=1e-9, abs=1e-12)
        low = float(row["minus_random_ci_low"])
        assert low <= float(row["minus_random"]) <= float(row["minus_random_ci_high"])
        assert row["above_random_95"] == ("yes" if low > 0 else "no")
        assert row["score_rule"] == "mean of the last 2 evaluation(s)"
        normalised = (np.mean(finals) - ref_mean) / (float(row["norm_max"]) - ref_mean)
        assert float(row["normalised_mean"]) == pytest.approx(normalised, rel=1e-9)

    # 4. rewards: what each trained on (read from the runs' configs), and the unequal-reward warning
    assert scores["mappo"]["trained_on"] == "each agent its own: per-agent rewards (shared_rew=false)"
    assert scores["mappo"]["scored_on"].startswith("`return`: mean over agents of their episode returns")
    text = (out / "report.md").read_text()
    assert "UNEQUAL REWARDS" not in text and "mean of the last 2 evaluation(s)" in text
    assert "| vmas/navigation | *random* (reference) |" in text and "above random (95%)" in text
    assert "FEW SEEDS" not in text

    # 5. the cache: a second report evaluates nothing and writes the same tables, byte for byte
    again = tmp_path / "again"
    assert main(["report", str(sweep), "--out", str(again), "--reps", "200", "--last-k", "2",
                 "--reference-cache", str(out / "reference.json"), "--cached-reference-only"]) == 0
    for name in ("task_scores.csv", "reference_scores.csv", "runs.csv"):
        assert (again / name).read_bytes() == (out / name).read_bytes(), name
    assert not (again / "reference.json").exists()  # the given cache is read, not rewritten

    # 6. two seeds: intervals flagged, no verdict
    two = tmp_path / "two"
    assert main(["report", *[str(p) for p in sweep.glob("vmas/navigation/*/seed=[01]")], "--out", str(two),
                 "--reps", "100", "--last-k", "2", "--reference-cache", str(out / "reference.json")]) == 0
    assert all(r["above_random_95"] == "n/a (2 seeds < 3)" for r in read_csv(two / "task_scores.csv"))
    assert "FEW SEEDS" in (two / "report.md").read_text()


def _hydra_task(sweep) -> dict:
    import yaml

    config = next(sweep.rglob(".hydra/config.yaml"))
    return yaml.safe_load(config.read_text())["task"]


def test_verdict_from_bootstrap_difference():
    rng = np.random.default_rng(0)
    random_episodes = rng.normal(0.0, 1.0, size=60)
    point, low, high = difference_ci(np.array([5.0, 5.2, 4.9]), random_episodes, reps=500, seed=0)
    assert point == pytest.approx(np.mean([5.0, 5.2, 4.9]) - random_episodes.mean())
    assert low > 0 and verdict(3, low) == "yes"
    _, low, _ = difference_ci(random_episodes[:3], random_episodes, reps=500, seed=0)
    assert low < 0 and verdict(3, low) == "no"
    assert verdict(2, 1.0) == "n/a (2 seeds < 3)" and verdict(1, None) == "n/a (1 seed)"


def _coordsum_setup():
    from benchmarl_decentral.environments.coordsum import CoordSumTask

    config = dict(CoordSumTask.from_name("3x10-30").get_from_yaml().config)
    return TaskSetup("coordsum/3x10-30", config, continuous_actions=False)


def test_discrete_reference_policies_on_coordsum_match_its_rules():
    """CoordSum 3x10-30 (discrete, action masks): every sum 0..27 is reachable, targets are uniform in 0..29.

    Zero action: all pick 0, the sum hits only target 0 (p = 1/30), and the
    opponent always guesses agent 0's 0 (history or tie -> 0), so each hit
    scores 1: expected return 100/30. Random: each step hits with p = 1/30
    (sum of three picks is some value in 0..27, the target matches it with
    p 1/30), scoring 1 or 2: expected return in [100/30, 200/30].
    """
    setup = _coordsum_setup()
    n, p = 200, 1 / 30
    standard_error = math.sqrt(100 * p * (1 - p) / n) * 2  # reward up to 2 per hit
    zero = np.asarray(evaluate_policy(setup, "zero", seed=3, episodes=n))
    assert abs(zero.mean() - 100 * p) < 4 * math.sqrt(100 * p * (1 - p) / n)
    assert set(np.unique(zero % 1)) == {0.0}  # integer returns: only guessed hits (1 each)
    random = np.asarray(evaluate_policy(setup, "random", seed=3, episodes=n))
    assert 100 * p - 4 * standard_error < random.mean() < 200 * p + 4 * standard_error
    assert random.mean() > zero.mean()  # unguessed hits score 2


def test_random_policy_respects_action_masks_and_zero_takes_the_noop():
    setup = _coordsum_setup()
    env, _, group_map, _ = make_env(setup, num_envs=64, seed=0)
    td = env.reset()
    mask = torch.zeros(64, 3, 10, dtype=torch.bool)
    mask[..., 3] = True
    mask[:, 1, 7] = True  # agent 1 may pick 3 or 7
    td.set(("agents", "action_mask"), mask)
    torch.manual_seed(0)
    action = RandomPolicy(env, group_map, "coordsum")(td.clone()).get(("agents", "action"))
    assert set(action[:, 0].tolist()) == {3} and set(action[:, 1].tolist()) == {3, 7}
    zero = ZeroPolicy(env, group_map, "coordsum")(td.clone()).get(("agents", "action"))
    assert set(zero.flatten().tolist()) == {3}  # action 0 is masked: the first allowed action
    td.set(("agents", "action_mask"), torch.ones(64, 3, 10, dtype=torch.bool))
    zero = ZeroPolicy(env, group_map, "smax")(td.clone()).get(("agents", "action"))
    assert set(zero.flatten().tolist()) == {4}  # SMAX's no-op is stop (4)


def test_discrete_vmas_and_scripted_registry():
    import yaml
    from benchmarl.environments import VmasTask

    config = dict(VmasTask.NAVIGATION.get_from_yaml().config, n_agents=2, max_steps=10)
    setup = TaskSetup("vmas/navigation", config, continuous_actions=False)
    assert evaluate_policy(setup, "zero", seed=0, episodes=4) == [0.0] * 4
    for policy in ("random", "go_to_goal"):
        returns = evaluate_policy(setup, policy, seed=0, episodes=4)
        assert len(returns) == 4 and all(math.isfinite(r) for r in returns)
    assert policy_names("vmas/navigation") == ["random", "zero", "go_to_goal"]
    # continuous: the scripted go-to-goal (with lidar repulsion) reaches goals that random actions do not
    setup = TaskSetup("vmas/navigation", dict(config, max_steps=40), continuous_actions=True)
    scripted = np.mean(evaluate_policy(setup, "go_to_goal", seed=1, episodes=16))
    assert scripted > 0.5 and scripted > np.mean(evaluate_policy(setup, "random", seed=1, episodes=16))
    assert "coordsum" in SCRIPTED_POLICIES and "vmas_private/navigation_agent0" in SCRIPTED_POLICIES
    del yaml


def test_reward_used_and_unequal_reward_warning():
    from benchmarl_decentral.reporting.report import unequal_rewards
    from benchmarl_decentral.reporting.scores import reward_used, scored_on

    navigation = {"shared_rew": False, "n_agents": 4}
    mappo = reward_used("vmas/navigation", "mappo", navigation, {})
    dg_mappo = reward_used("vmas/navigation", "dg_mappo", navigation, {})
    assert mappo == "each agent its own: per-agent rewards (shared_rew=false)"
    assert dg_mappo.startswith("team: mean over agents of the per-agent rewards (shared_rew=false)")
    note = unequal_rewards("vmas/navigation", {"mappo": mappo, "dgmappo": dg_mappo})
    assert note.startswith("vmas/navigation: UNEQUAL REWARDS") and "dgmappo: team" in note
    shared = {"shared_rew": True}  # the team reward for everyone: dg_mappo's mean of equal rewards changes nothing
    assert reward_used("vmas/navigation", "dg_mappo", shared, {}) == reward_used("vmas/navigation", "mappo", shared, {})
    assert unequal_rewards("coordsum/3x10-30", {a: reward_used("coordsum/3x10-30", a, {}, {})
                                                for a in ("magpo", "mappo")}) is None
    private = {"reward_mode": "agent0", "rewarded_agent": 0, "penalty_key": "agent_collisions", "shared_rew": True}
    assert "only agent 0 rewarded" in reward_used("vmas_private/navigation_agent0", "matrpo", private, {})
    assert "the team metric scaled by 1/n" in scored_on("return", "vmas_private/navigation_agent0", private)


def test_coordsum_scripted_policies_are_reference_rows():
    names = policy_names("coordsum/3x10-30")
    assert names == ["random", "zero", "agent0_deterministic", "best_response"]
    setup = _coordsum_setup()
    best = np.asarray(evaluate_policy(setup, "best_response", seed=0, episodes=50))
    random = np.asarray(evaluate_policy(setup, "random", seed=0, episodes=50))
    assert best.mean() > random.mean()  # a team that always reaches reachable targets beats random picks


def test_mpe_simple_spread_reference_rows_rank_nearest_landmark_zero_random():
    """The report's reference rows of mpe/simple_spread, built through BenchMARL's task like the runs' envs."""
    assert policy_names("mpe/simple_spread") == ["random", "zero", "nearest_landmark"]
    means = {}
    for continuous in (False, True):
        setup = TaskSetup("mpe/simple_spread", {"N": 8, "local_ratio": 0.5, "max_cycles": 25},
                          continuous_actions=continuous)
        means[continuous] = {policy: np.mean(evaluate_policy(setup, policy, seed=0, episodes=40))
                             for policy in policy_names("mpe/simple_spread")}
        assert means[continuous]["nearest_landmark"] > means[continuous]["zero"] + 5, means
        assert means[continuous]["zero"] > means[continuous]["random"], means
    assert means[False]["zero"] == means[True]["zero"]  # standing still is the same with either action kind


def test_episode_returns_are_benchmarl_evaluation_returns():
    """Oracle: reward summed step by step up to the first done, mean over agents. The rollout runs
    past max_steps (auto-reset), so the steps after the first done must be left out."""
    import torch
    from benchmarl.environments import task_config_registry

    from benchmarl_decentral.reporting.reference import episode_returns

    task = task_config_registry["vmas/balance"].get_from_yaml()
    task.config["max_steps"] = 20
    env = task.get_env_fun(num_envs=3, continuous_actions=True, seed=0, device="cpu")()
    torch.manual_seed(0)
    rollout = env.rollout(max_steps=30, break_when_any_done=False)
    group_map = task.group_map(env)
    (group,) = group_map
    reward, done = rollout.get(("next", group, "reward")), rollout.get(("next", "done"))
    expected = []
    for e in range(3):
        total = 0.0
        for t in range(30):
            total += reward[e, t].mean().item()
            if done[e, t].item():
                break
        expected.append(total)
    assert done[:, :-1].any()  # an episode ended (and restarted) within the rollout
    assert episode_returns(list(rollout.unbind(0)), group_map) == pytest.approx(expected, rel=1e-5, abs=1e-5)
