"""Exact resume (benchmarl_decentral.resume): a run resumed from checkpoint N and run to N+2
equals the run that went to N+2 without stopping, as BenchMARL's own test_reload checks a
reload (here: bit-equal checkpoints and logged scalars, on CPU).
"""

from __future__ import annotations

import csv
import math
import random
import warnings

import numpy as np
import pytest
import torch

from benchmarl_decentral import resume
from conftest import make_experiment

FRAMES = 60  # frames per iteration (tiny_experiment_config)
N = 2  # resume from the checkpoint written after iteration N, run to N + 2
SMALL = {
    # each agent's running moments of its value targets continue too, and with link_latency the
    # parameter vectors still in flight (with link failures, decpg: which messages were sent)
    "decpg": {"value_norm": True, "link_latency": 2, "link_failure": 0.3},
    "dg_mappo": {"value_norm": True, "link_latency": 2},
    # random links: the resumed run must continue the link-selection RNG
    "matrpo": {"num_cells": None, "activation": None, "admm_iterations": 3, "admm_mode": "random"},
    "magpo": {"embed_dim": 16},
    "mappo": {},
}


def _dir(path):
    path.mkdir(parents=True, exist_ok=True)
    return path


def _flat(value, prefix=""):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _flat(item, f"{prefix}/{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _flat(item, f"{prefix}/{i}")
    else:
        yield prefix, value


def _same(a, b) -> bool:
    """Bit-equal (NaN equal to NaN)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
            and a.shape == b.shape and a.dtype == b.dtype
            and (torch.equal(a, b) or (a.is_floating_point() and bool(torch.isclose(a, b, 0, 0, True).all())))
        )
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def _checkpoint_differences(a_file, b_file):
    """Entries of two checkpoints that differ, but the wall-clock time and the loaded
    replay buffer's device tag (TorchRL's storage ``load_state_dict`` leaves it ``None``)."""
    a = dict(_flat(torch.load(a_file)))
    b = dict(_flat(torch.load(b_file)))
    skip = lambda key: key == "/state/total_time" or key.endswith("/__device")  # noqa: E731
    keys = {k for k in a.keys() | b.keys() if not skip(k)}
    return sorted(k for k in keys if k not in a or k not in b or not _same(a[k], b[k])), len(keys)


def _scalars(exp):
    out = {}
    for file in (exp.folder_name / exp.name / "scalars").glob("*.csv"):
        if not file.stem.startswith("timers"):
            with open(file) as f:
                out[file.stem] = {int(row[0]): row[1] for row in csv.reader(f)}
    return out


def _continuation(tmp_path, algorithm, task, **experiment):
    """Run to N+2 checkpointing every iteration; resume a second run from checkpoint N to N+2."""
    kwargs = dict(
        algorithm=algorithm, task=task, algorithm_overrides=SMALL.get(algorithm),
        max_n_iters=N + 2, checkpoint_interval=FRAMES, keep_checkpoints_num=None,
        loggers=["csv"], evaluation=True, evaluation_interval=2 * FRAMES, **experiment,
    )
    straight = make_experiment(_dir(tmp_path / "straight"), **kwargs)
    straight.run()
    checkpoints = straight.folder_name / "checkpoints"
    resumed = make_experiment(
        _dir(tmp_path / "resumed"), restore_file=str(checkpoints / f"checkpoint_{N * FRAMES}.pt"), **kwargs
    )
    assert resumed.n_iters_performed == N
    resumed.run()
    return straight, resumed


def _assert_exact_continuation(straight, resumed):
    last = f"checkpoint_{(N + 2) * FRAMES}.pt"
    differences, compared = _checkpoint_differences(
        straight.folder_name / "checkpoints" / last, resumed.folder_name / "checkpoints" / last
    )
    assert compared > 100
    assert differences == []
    # what the plugin adds is there and not trivial: every optimizer, Adam with its moments
    state = torch.load(resumed.folder_name / "checkpoints" / last)[resume.KEY]
    assert set(state["optimizers"]) == set(resumed.optimizers)
    for group, optimizers in resumed.optimizers.items():
        assert set(state["optimizers"][group]) == set(optimizers)
        for name, optimizer in optimizers.items():
            if isinstance(optimizer, torch.optim.Adam):
                assert state["optimizers"][group][name]["state"], (group, name)
    assert state["carrier"] is not None and state["train_env"] is not None
    # every scalar logged after the checkpoint (iterations N, N+1 ... N+2-1), timers aside
    a, b = _scalars(straight), _scalars(resumed)
    assert a.keys() == b.keys() and len(b) > 10
    for name, rows in b.items():
        assert set(rows) <= {N, N + 1}, name
        if name.startswith(("train", "counters")):
            assert set(rows) == {N, N + 1}, name
        assert rows == {step: a[name][step] for step in rows}, name
    assert any(name.startswith("eval") for name in b)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["decpg", "dg_mappo", "matrpo", "magpo", "mappo"])
def test_resume_equals_the_uninterrupted_run_on_coordsum(tmp_path, algorithm):
    straight, resumed = _continuation(tmp_path, algorithm, "coordsum/3x10-30")
    _assert_exact_continuation(straight, resumed)
    if SMALL[algorithm].get("link_latency"):  # the history is in the checkpoint, full (2 mixings per iteration)
        last = f"checkpoint_{(N + 2) * FRAMES}.pt"
        histories = torch.load(resumed.folder_name / "checkpoints" / last)[resume.KEY]["algorithm"]["link_history"]
        assert histories and all(h["latency"] == 2 and len(h["slots"]) == 2 and h["steps"] == 2 * (N + 2)
                                 for h in histories.values())


def _csv_rows(exp):
    """Every row of every scalar file of the run, timers aside: ``{name: [(step, value), ...]}``, in file order."""
    out = {}
    for file in sorted((exp.folder_name / exp.name / "scalars").glob("*.csv")):
        if not file.stem.startswith("timers"):
            with open(file) as f:
                out[file.stem] = [(int(row[0]), row[1]) for row in csv.reader(f)]
    return out


@pytest.mark.slow
def test_resume_in_the_run_folder_logs_every_iteration_once(tmp_path):
    """`benchmarl resume` of a run that went past its checkpoint (a crash) writes into the same run folder,
    whose CSV files BenchMARL appends to: the rows after the checkpoint are dropped when training resumes,
    so each iteration is logged once, with the values of the run that never stopped (exact resume)."""
    kwargs = dict(algorithm="mappo", task="coordsum/3x10-30", max_n_iters=N + 2, checkpoint_interval=FRAMES,
                  keep_checkpoints_num=None, loggers=["csv"], evaluation=True, evaluation_interval=2 * FRAMES)
    save = _dir(tmp_path / "runs")
    straight = make_experiment(save, **kwargs)
    straight.run()
    before = _csv_rows(straight)
    assert {step for rows in before.values() for step, _ in rows} == set(range(N + 2))
    checkpoint = straight.folder_name / "checkpoints" / f"checkpoint_{N * FRAMES}.pt"
    evaluated = make_experiment(save, restore_file=str(checkpoint), **kwargs)
    evaluated.evaluate()  # evaluating an old checkpoint leaves the run's own files alone
    assert _csv_rows(straight) == before
    resumed = make_experiment(save, restore_file=str(checkpoint), **kwargs)
    assert resumed.folder_name == straight.folder_name and resumed.n_iters_performed == N
    resumed.run()
    assert _csv_rows(resumed) == before  # once each, same order, same values


@pytest.mark.slow
def test_resume_equals_the_uninterrupted_run_on_vmas(tmp_path):
    # continuous actions, episode ends at steps 50 and 100 (30 steps per env and iteration: the second
    # one after the checkpoint) and VMAS's own random state
    straight, resumed = _continuation(tmp_path, "decpg", "vmas/balance", task_overrides={"max_steps": 50})
    _assert_exact_continuation(straight, resumed)


@pytest.mark.slow
def test_resume_without_env_state_restores_everything_else_and_says_so(tmp_path):
    """PettingZoo runs in a SerialEnv whose state is not captured: a warning names it; the
    optimizers, losses and random states are still those of the checkpoint."""
    kwargs = dict(algorithm="decpg", task="pettingzoo/simple_spread", algorithm_overrides={"optimizer": "adam"},
                  max_n_iters=1, checkpoint_at_end=True)
    first = make_experiment(_dir(tmp_path / "first"), **kwargs)
    first.run()
    checkpoint = first.folder_name / "checkpoints" / f"checkpoint_{FRAMES}.pt"
    saved = torch.load(checkpoint)
    assert saved[resume.KEY]["train_env"] is None and saved[resume.KEY]["carrier"] is None
    with warnings.catch_warnings(record=True) as caught:  # loading alone (e.g. evaluate) says nothing
        warnings.simplefilter("always")
        resumed = make_experiment(_dir(tmp_path / "resumed"), restore_file=str(checkpoint), **kwargs)
    assert not [w for w in caught if "cannot restore" in str(w.message)]
    for group, optimizers in resumed.optimizers.items():
        for name, optimizer in optimizers.items():
            # the moments; DecPG's learning-rate schedule sets param_groups' lr for the next iteration
            loaded = dict(_flat(optimizer.state_dict()["state"]))
            expected = dict(_flat(saved[resume.KEY]["optimizers"][group][name]["state"]))
            assert loaded.keys() == expected.keys()
            assert all(_same(loaded[k], expected[k]) for k in expected)
            assert any(k.endswith("exp_avg_sq") for k in expected)  # Adam moments, not a fresh optimizer
    torch.manual_seed(123)
    with pytest.warns(UserWarning, match="cannot restore the state of SerialEnv"):  # said when training resumes
        resumed.run()  # max_n_iters reached: the loop only sets the random states (after run's reseeding)
    assert torch.equal(torch.random.get_rng_state(), saved[resume.KEY]["rng"]["torch"])


def test_checkpoint_without_resume_state_loads_with_a_warning(tmp_path):
    exp = make_experiment(_dir(tmp_path / "first"), algorithm="mappo", task="coordsum/3x10-30", max_n_iters=1,
                          checkpoint_at_end=True)
    exp.run()
    checkpoint = exp.folder_name / "checkpoints" / f"checkpoint_{FRAMES}.pt"
    state = torch.load(checkpoint)
    del state[resume.KEY]  # as written by BenchMARL alone
    torch.save(state, checkpoint)
    resumed = make_experiment(_dir(tmp_path / "resumed"), algorithm="mappo", task="coordsum/3x10-30",
                              max_n_iters=2, restore_file=str(checkpoint))
    assert resumed.n_iters_performed == 1
    with pytest.warns(UserWarning, match="holds no optimizer, random or environment state"):
        resumed.run()
    assert resumed.n_iters_performed == 2


def test_rng_state_round_trip():
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    state = resume.rng_state()
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    resume.set_rng_state(state)
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert [random.random() for _ in range(3)] == expected[2]


def _vmas_env(seed, name="BALANCE"):
    from benchmarl.environments import VmasTask

    task = getattr(VmasTask, name).get_from_yaml()
    task.config["max_steps"] = 20
    return task.get_env_fun(num_envs=2, continuous_actions=True, seed=seed, device="cpu")()


# balance: plain; sampling: torch.distributions redrawn at reset; simple_reference: goals are
# references to randomly drawn entities; football: per-agent state in dicts keyed by agents
@pytest.mark.parametrize(
    "name", ["BALANCE", pytest.param("SAMPLING", marks=pytest.mark.slow), "SIMPLE_REFERENCE", "FOOTBALL"]
)
def test_vmas_env_state_round_trip_across_episode_ends(tmp_path, name):
    """A fresh VMAS env given the captured state (and the global random state) then steps
    exactly as the original, through episode ends and their random resets."""
    torch.manual_seed(0)
    original = _vmas_env(0, name)
    td = original.reset()
    actions = [original.full_action_spec.rand() for _ in range(50)]
    for action in actions[:7]:
        td = original.step_and_maybe_reset(td.update(action))[1]
    state, rng, carrier = resume.env_state(original), resume.rng_state(), td.clone()
    path = tmp_path / "state.pt"
    torch.save({"env": state, "rng": rng}, path)
    loaded = torch.load(path, weights_only=True)
    expected = []
    for action in actions[7:]:
        out, td = original.step_and_maybe_reset(td.update(action))
        expected.append(out["next"].clone())
    assert any(bool(step["done"].any()) for step in expected)

    other = _vmas_env(5, name)  # another seed, stepped a little: nothing of it may leak through
    td_other = other.reset()
    other.step_and_maybe_reset(td_other.update(actions[0]))
    resume.load_env_state(other, loaded["env"])
    resume.set_rng_state(loaded["rng"])
    td = carrier
    for action, want in zip(actions[7:], expected):
        out, td = other.step_and_maybe_reset(td.update(action))
        assert (out["next"] == want).all()


def test_a_rendered_vmas_env_restores_into_a_fresh_one_with_its_random_stream():
    """BenchMARL's evaluation renders its test env (``experiment.render=true``, the default): the renderer's
    attributes are not simulation state, so a rendered env's state (and an older checkpoint's, which held
    them) restores into a fresh env, VMAS's random state with it: the next random reset is the original's."""
    original = _vmas_env(0)
    original.reset()
    original.render(mode="rgb_array")
    assert original._env.viewer is not None
    state = resume.env_state(original)
    simulator = original._env
    older = {"env": "vmas", "state": {**state["state"], "simulator": resume._capture_tree(
        simulator, resume._vmas_should_enter(simulator))}}  # as saved before the renderer was left out
    assert len(older["state"]["simulator"]) > len(state["state"]["simulator"])
    expected = original.reset()
    for saved in (state, older):
        fresh = _vmas_env(1)
        fresh.reset()
        resume.load_env_state(fresh, saved)
        assert fresh._env.viewer is None
        assert (fresh.reset() == expected).all()


def test_vmas_state_that_does_not_fit_is_refused():
    env = _vmas_env(0)
    env.reset()
    state = resume.env_state(env)
    state["state"]["simulator"].append(((("a", "scenario"), ("a", "no_such_thing"), ("a", "x")), 1.0))
    with pytest.raises(ValueError, match=r"\.scenario\.no_such_thing\.x of the checkpoint does not exist"):
        resume.load_env_state(_vmas_env(1), state)


@pytest.mark.slow
@pytest.mark.parametrize("env", ["train_env", "test_env"])
def test_resume_falls_back_to_a_reset_when_the_env_state_does_not_fit(tmp_path, env):
    """The training env: a reset, with a warning. The test env: a reset, before the training env's restore,
    so the random state VMAS shares between them (one per process) is still the training env's."""
    from vmas.simulator.environment import Environment

    kwargs = dict(algorithm="mappo", task="vmas/balance", max_n_iters=1, checkpoint_at_end=True)
    first = make_experiment(_dir(tmp_path / "first"), **kwargs)
    first.run()
    checkpoint = first.folder_name / "checkpoints" / f"checkpoint_{FRAMES}.pt"
    saved = torch.load(checkpoint)
    saved[resume.KEY][env]["state"]["simulator"].append(((("a", "no_such_thing"),), 1.0))
    torch.save(saved, checkpoint)
    kwargs["max_n_iters"] = 2
    resumed = make_experiment(_dir(tmp_path / "resumed"), restore_file=str(checkpoint), **kwargs)
    if env == "test_env":
        train_random = saved[resume.KEY]["train_env"]["state"]["random_state"]["torch"]
        assert torch.equal(Environment.vmas_random_state[0], train_random)
        return
    with pytest.warns(UserWarning, match=r"cannot restore the state of VmasEnv exactly \(\.no_such_thing found where"):
        resumed.run()
    assert resumed.n_iters_performed == 2


def test_env_state_of_another_env_is_refused():
    from benchmarl_decentral.environments.coordsum import CoordSumEnv

    state = resume.env_state(CoordSumEnv(n_agents=2, num_actions=3, max_target=4, num_envs=2, seed=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = _vmas_env(0)
    with pytest.raises(ValueError, match="state of a 'coordsum' environment"):
        resume.load_env_state(env, state)
