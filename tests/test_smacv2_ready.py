"""SMACv2 readiness: our algorithms, D-GAT and visibility graphs on SMACv2's interface.

StarCraft II cannot be installed here, so the game itself is the one thing
replaced: :class:`_Sc2FreeSmacv2Env` has exactly the TorchRL interface of
``torchrl.envs.libs.smacv2.SMACv2Env`` (the env BenchMARL's ``smacv2/*`` tasks
build: unbatched, group ``agents``, bool ``action_mask``, categorical actions,
``state``, ``info`` with ``battle_won`` ...), with sizes computed from
BenchMARL's real task YAML, random dynamics and SMACv2's refusal of illegal
actions. Everything around it is real: BenchMARL's ``Smacv2Class`` (spec
splitting, ``log_info``, ``max_steps``), its task configs, hydra composition,
the ``Experiment`` loop and our algorithms. Where ``SC2PATH`` points at a
StarCraft II install and ``smacv2`` is importable, the last tests run the real game.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import pytest
import torch
from benchmarl.environments.smacv2.common import Smacv2Class
from tensordict import TensorDict
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

import benchmarl_decentral  # noqa: F401  (registers our algorithms)
from benchmarl_decentral.consensus.visibility import (
    SmacObsLayout,
    smacv2_sizes,
    visibility_adjacency,
    visibility_from_positions,
)
from benchmarl_decentral.environments.smax import SmacWinRateCallback
from conftest import REPO, run_cli, tiny_experiment_config

OUR_ALGORITHMS = ["decpg", "dg_mappo", "matrpo", "magpo"]
#: 5, 10 and 20 agents, the three races (shields for protoss, medivac actions for terran)
TASKS = ["smacv2/protoss_5_vs_5", "smacv2/terran_10_vs_11", "smacv2/zerg_20_vs_20"]


def starcraft2_missing_reason() -> str | None:
    """Why the real SMACv2 cannot run here (None when it can)."""
    path = os.environ.get("SC2PATH")
    if not path:
        return (
            "StarCraft II not found: set SC2PATH to the StarCraft II install folder "
            "(e.g. export SC2PATH=~/StarCraftII) and pip install "
            "git+https://github.com/oxwhirl/smacv2.git"
        )
    if not Path(path).expanduser().is_dir():
        return f"SC2PATH={path} is not a folder: point it at the StarCraft II install folder"
    try:
        import smacv2  # noqa: F401
    except ImportError:
        return "smacv2 is not installed: pip install git+https://github.com/oxwhirl/smacv2.git"
    return None


SC2_MISSING = starcraft2_missing_reason()


def _require_algorithm(name: str) -> None:
    from benchmarl.algorithms import algorithm_config_registry

    if name not in algorithm_config_registry:
        pytest.skip(f"algorithm '{name}' is not registered yet")


def _task_config(task: str) -> dict:
    from benchmarl.environments import task_config_registry

    return task_config_registry[task].get_from_yaml().config


# ------------------------------------------------------------------ the stand-in game
class _Sc2FreeSmacv2Env(EnvBase):
    """SMACv2Env's TorchRL interface without StarCraft II (random dynamics).

    Specs as ``torchrl.envs.libs.smacv2.SMACv2Wrapper._make_*_spec``; sizes from
    :func:`smacv2_sizes`. Each step every live ally dies with probability
    ``p_death``; the battle ends when all allies died (loss), at random
    (``p_win``, a win) or at the episode limit. Actions follow SMACv2's
    indices: 0 no-op (the only legal action of a dead agent), 1 stop, 2-5 move,
    6+ attack. Ally-visibility flags in the observation are computed from
    hidden unit positions (sight range 9), the rest of the observation is noise.
    """

    def __init__(self, config: dict, *, seed=None, device="cpu", p_death=0.03, p_win=0.04):
        sizes = smacv2_sizes(config)
        super().__init__(device=device, batch_size=())
        self.sizes = sizes
        self.layout = SmacObsLayout.smacv2(config)
        self.n_agents, self.n_enemies, self.n_actions = sizes["n_agents"], sizes["n_enemies"], sizes["n_actions"]
        self.episode_limit = sizes["episode_limit"]
        self.group_map = {"agents": [str(i) for i in range(self.n_agents)]}
        self.p_death, self.p_win = p_death, p_win
        self.rng = torch.Generator().manual_seed(0 if seed is None else seed)
        n, dev = self.n_agents, self.device
        self.reward_spec = Unbounded(shape=(1,), device=dev)
        self.done_spec = Categorical(2, shape=(1,), dtype=torch.bool, device=dev)
        self.full_action_spec = Composite(
            agents=Composite(action=Categorical(self.n_actions, shape=(n,), dtype=torch.long, device=dev), shape=(n,)),
        )
        self.observation_spec = Composite(
            agents=Composite(
                observation=Bounded(-1.0, 1.0, shape=(n, sizes["obs_dim"]), device=dev, dtype=torch.float32),
                action_mask=Categorical(2, (n, self.n_actions), device=dev, dtype=torch.bool),
                shape=(n,),
            ),
            state=Bounded(-1.0, 1.0, shape=(sizes["state_dim"],), device=dev, dtype=torch.float32),
            info=Composite(
                battle_won=Categorical(2, dtype=torch.bool, device=dev),
                episode_limit=Categorical(2, dtype=torch.bool, device=dev),
                dead_allies=Bounded(0, n, dtype=torch.long, device=dev, shape=()),
                dead_enemies=Bounded(0, self.n_enemies, dtype=torch.long, device=dev, shape=()),
            ),
        )

    def _set_seed(self, seed):
        self.rng.manual_seed(int(seed) % (2**63))

    def _observe(self, info, reward=None, done=False):
        n, lay = self.n_agents, self.layout
        obs = torch.rand(n, self.sizes["obs_dim"], generator=self.rng) * 2 - 1
        ally = obs[:, lay.ally_offset: lay.ally_offset + (n - 1) * lay.ally_feat_dim].view(n, n - 1, lay.ally_feat_dim)
        visible = visibility_from_positions(self.pos, torch.full((n,), 9.0), self.alive, self_loops=False)
        others = torch.tensor([[j for j in range(n) if j != i] for i in range(n)])
        ally[..., 0] = visible.gather(1, others).float()  # ally_visible flag
        obs[~self.alive] = 0.0  # a dead agent observes nothing
        mask = torch.zeros(n, self.n_actions, dtype=torch.bool)
        mask[:, 1:6] = True
        mask[:, 6:] = torch.rand(n, self.n_actions - 6, generator=self.rng) < 0.5
        mask[~self.alive] = False
        mask[~self.alive, 0] = True
        out = {
            "agents": TensorDict({"observation": obs, "action_mask": mask}, batch_size=(n,)),
            "state": torch.rand(self.sizes["state_dim"], generator=self.rng) * 2 - 1,
            "info": TensorDict(info, batch_size=()),
        }
        if reward is not None:
            done_t = torch.tensor([done])
            out.update(reward=torch.tensor([reward], dtype=torch.float32), done=done_t, terminated=done_t.clone())
        return TensorDict(out, batch_size=(), device=self.device)

    def _info(self, won=False, limit=False):
        return {
            "battle_won": torch.tensor(won),
            "episode_limit": torch.tensor(limit),
            "dead_allies": (~self.alive).sum(),
            "dead_enemies": torch.tensor(self.n_enemies if won else 0),
        }

    def _reset(self, tensordict=None, **kwargs):
        self.t = 0
        self.pos = torch.rand(self.n_agents, 2, generator=self.rng) * 16
        self.alive = torch.ones(self.n_agents, dtype=torch.bool)
        self._mask = None
        out = self._observe(self._info())
        self._update_action_mask(out)
        return out

    def _step(self, tensordict):
        action = tensordict.get(("agents", "action")).reshape(self.n_agents)
        if not self._mask.gather(-1, action.unsqueeze(-1)).all():
            raise ValueError(f"an agent took an action its action_mask forbids: {action.tolist()}")  # as SMACv2
        self.t += 1
        self.pos = (self.pos + torch.randn(self.n_agents, 2, generator=self.rng)).clamp(0, 32)
        self.alive &= torch.rand(self.n_agents, generator=self.rng) >= self.p_death
        won = bool(self.alive.any()) and bool(torch.rand((), generator=self.rng) < self.p_win)
        limit = self.t >= self.episode_limit and not won
        done = won or limit or not bool(self.alive.any())
        out = self._observe(self._info(won, limit), reward=1.0 if won else 0.0, done=done)
        self._update_action_mask(out)
        return out

    def _update_action_mask(self, out):
        # as SMACv2Wrapper._update_action_mask: the action spec carries the mask (rand_action respects it)
        self._mask = out["agents", "action_mask"]
        self.full_action_spec["agents", "action"].update_mask(self._mask.clone())


class _Sc2FreeSmacv2Class(Smacv2Class):
    """BenchMARL's real Smacv2Class, only its env constructor replaced (module level: BenchMARL pickles it)."""

    def get_env_fun(self, num_envs, continuous_actions, seed, device):
        config = copy.deepcopy(self.config)
        return lambda: _Sc2FreeSmacv2Env(config, seed=seed, device=device)


def _sc2_free_task(task: str) -> _Sc2FreeSmacv2Class:
    return _Sc2FreeSmacv2Class(name=task.split("/")[1].upper(), config=_task_config(task))


# ------------------------------------------------------------------ sizes and layout
def test_sizes_match_torchrl_documented_smacv2_shapes():
    """TorchRL's SMACv2Wrapper docstring: 10gen_terran, 5 vs 6 units -> obs 88, 12 actions, state 131."""
    config = {
        "map_name": "10gen_terran",
        "capability_config": {
            "n_units": 5,
            "n_enemies": 6,
            "team_gen": {"dist_type": "weighted_teams", "unit_types": ["marine", "marauder", "medivac"],
                         "exception_unit_types": ["medivac"], "weights": [0.5, 0.2, 0.3], "observe": True,
                         "n_units": 5, "n_enemies": 6},
            "start_positions": {"dist_type": "surrounded_and_reflect", "p": 0.5, "n_enemies": 5,
                                "map_x": 32, "map_y": 32},
        },
    }
    sizes = smacv2_sizes(config)
    assert (sizes["obs_dim"], sizes["n_actions"], sizes["state_dim"]) == (88, 12, 131)


@pytest.mark.parametrize("task", TASKS)
def test_layout_of_the_benchmarl_task_configs(task):
    config = _task_config(task)
    sizes = smacv2_sizes(config)
    _, n_units, _, n_enemies = task.split("/")[1].split("_")  # e.g. terran_10_vs_11
    assert (sizes["n_agents"], sizes["n_enemies"]) == (int(n_units), int(n_enemies))
    assert sizes["n_actions"] == 6 + int(n_enemies)  # no-op, stop, 4 moves, one attack per enemy
    # the blocks tile the observation: move | enemies | allies | own
    assert sizes["ally_offset"] == sizes["move_feat_dim"] + sizes["n_enemies"] * sizes["enemy_feat_dim"]
    assert sizes["obs_dim"] == (sizes["ally_offset"] + (sizes["n_agents"] - 1) * sizes["ally_feat_dim"]
                                + sizes["own_feat_dim"])
    layout = SmacObsLayout.smacv2(config)
    assert layout.obs_dim == sizes["obs_dim"] and layout.n_agents == sizes["n_agents"]


def test_visibility_adjacency_on_smacv2_observations():
    """Hand-placed units -> ally_visible flags at the SMACv2 layout -> the expected graph."""
    config = _task_config("smacv2/protoss_5_vs_5")
    layout = SmacObsLayout.smacv2(config)
    pos = torch.tensor([[0.0, 0.0], [5.0, 0.0], [13.0, 0.0], [0.0, 8.5], [30.0, 30.0]])
    alive = torch.tensor([True, True, True, True, False])
    expected = visibility_from_positions(pos, torch.full((5,), 9.0), alive, self_loops=False)
    # 0 sees 1 (5) and 3 (8.5); 1 sees 0, 2 (8); 2 sees 1; 3 sees 0; 4 is dead
    assert expected.nonzero().tolist() == [[0, 1], [0, 3], [1, 0], [1, 2], [2, 1], [3, 0]]
    obs = torch.rand(5, layout.obs_dim) * 2 - 1
    for i in range(5):
        others = [j for j in range(5) if j != i]
        for slot, j in enumerate(others):
            obs[i, layout.ally_offset + slot * layout.ally_feat_dim] = float(expected[i, j])
    obs[4] = 0.0
    batch = obs.expand(3, 5, layout.obs_dim)
    for lay in ("smacv2/protoss_5_vs_5", layout):
        adj = visibility_adjacency(batch, layout=lay, self_loops=False)
        assert adj.shape == (3, 5, 5) and torch.equal(adj[1], expected)
    with_loops = visibility_adjacency(obs, layout=layout)
    assert torch.equal(with_loops, expected | torch.eye(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="unknown SMACv2 task"):
        visibility_adjacency(obs, layout="smacv2/protoss_6_vs_6")
    with pytest.raises(ValueError, match="layout expects"):
        visibility_adjacency(obs, layout="smacv2/terran_5_vs_5")  # no shields: another layout


def test_stand_in_env_has_smacv2_specs_and_visibility():
    from torchrl.envs.utils import check_env_specs

    config = _task_config("smacv2/protoss_5_vs_5")
    env = _Sc2FreeSmacv2Env(config, seed=0)
    check_env_specs(env)
    task = _sc2_free_task("smacv2/protoss_5_vs_5")
    assert task.observation_spec(env)["agents", "observation"].shape == (5, smacv2_sizes(config)["obs_dim"])
    assert task.max_steps(env) == 200 and task.group_map(env) == {"agents": ["0", "1", "2", "3", "4"]}
    td = env.reset()
    for _ in range(10):
        assert torch.equal(
            visibility_adjacency(td["agents", "observation"], layout="smacv2/protoss_5_vs_5", self_loops=False),
            visibility_from_positions(env.pos, torch.full((5,), 9.0), env.alive, self_loops=False),
        )
        stop_or_noop = env.alive.long()  # 1 = stop (alive), 0 = no-op (dead): always legal
        td = env.step(td.set(("agents", "action"), stop_or_noop))["next"]
    with pytest.raises(ValueError, match="action_mask forbids"):
        env.step(td.set(("agents", "action"), torch.zeros(5, dtype=torch.long)))  # no-op while alive


# ------------------------------------------------------------------ hydra composition
@pytest.mark.parametrize("algorithm", OUR_ALGORITHMS)
@pytest.mark.parametrize("task", TASKS)
def test_hydra_composes_with_real_smacv2_task_configs(algorithm, task):
    from benchmarl.hydra_config import load_algorithm_config_from_hydra, load_task_config_from_hydra
    from hydra import compose, initialize_config_module

    _require_algorithm(algorithm)
    with initialize_config_module(config_module="benchmarl.conf", version_base=None):
        cfg = compose(config_name="config", overrides=[f"algorithm={algorithm}", f"task={task}"])
    assert cfg.task.map_name.startswith("10gen_")
    algo = load_algorithm_config_from_hydra(cfg.algorithm)
    assert algo.supports_discrete_actions()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_task_config_from_hydra(cfg.task, task)
    assert loaded.config == _task_config(task)


@pytest.mark.slow
def test_headline_command_composes():
    """``benchmarl run algorithm=dg_mappo task=smacv2/protoss_5_vs_5`` (design card), printed by ``--cfg job``."""
    _require_algorithm("dg_mappo")
    proc = run_cli(["run", "algorithm=dg_mappo", "task=smacv2/protoss_5_vs_5", "--cfg", "job"], cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "map_name: 10gen_protoss" in proc.stdout and "n_units: 5" in proc.stdout


# ------------------------------------------------------------------ build and train against SMACv2's specs
def _experiment(tmp_path, algorithm, task, model=None, algorithm_overrides=None, **overrides):
    from benchmarl.algorithms import algorithm_config_registry
    from benchmarl.experiment import Experiment
    from benchmarl.models import MlpConfig

    mlp = MlpConfig(num_cells=[16], layer_class=torch.nn.Linear, activation_class=torch.nn.Tanh)
    config = tiny_experiment_config(
        tmp_path, evaluation=True, evaluation_interval=60, loggers=["csv"], checkpoint_at_end=False, **overrides
    )
    algorithm_config = algorithm_config_registry[algorithm].get_from_yaml()
    for key, value in (algorithm_overrides or {}).items():
        setattr(algorithm_config, key, value)
    return Experiment(
        task=_sc2_free_task(task),
        algorithm_config=algorithm_config,
        model_config=model or mlp,
        critic_model_config=mlp,
        seed=0,
        config=config,  # no callbacks: the experiment hook adds the win-rate callback (SMACv2 info)
    )


def _csv_values(root: Path, name: str) -> list:
    files = list(root.rglob(f"scalars/{name}.csv"))
    assert files, f"{name}.csv not written"
    return [float(line.split(",")[1]) for line in files[0].read_text().split()]


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", OUR_ALGORITHMS)
def test_algorithm_trains_on_smacv2_specs(algorithm, tmp_path):
    _require_algorithm(algorithm)
    experiment = _experiment(tmp_path, algorithm, "smacv2/protoss_5_vs_5")
    # the specs BenchMARL hands to the algorithm are SMACv2's
    assert experiment.action_mask_spec is not None and experiment.state_spec is not None
    assert sum(isinstance(cb, SmacWinRateCallback) for cb in experiment.callbacks) == 1
    assert experiment.observation_spec["agents", "observation"].shape == (5, 92)
    assert experiment.action_spec["agents", "action"].space.n == 11
    experiment.run()  # the stand-in raises on any action outside the mask
    assert experiment.n_iters_performed == 2
    assert all(0.0 <= v <= 1.0 for v in _csv_values(tmp_path, "eval_info_win_rate"))
    assert _csv_values(tmp_path, "collection_info_win_rate")


@pytest.mark.slow
@pytest.mark.parametrize("task", ["smacv2/terran_10_vs_11", "smacv2/zerg_20_vs_20"])
def test_decpg_and_dgat_on_larger_smacv2_teams(task, tmp_path):
    """10 and 20 agents; the D-GAT model (full graph) as the actor of mappo."""
    _require_algorithm("decpg")
    (tmp_path / "decpg").mkdir()
    (tmp_path / "dgat").mkdir()
    experiment = _experiment(tmp_path / "decpg", "decpg", task, max_n_iters=1)
    n = smacv2_sizes(_task_config(task))["n_agents"]
    assert experiment.observation_spec["agents", "observation"].shape[0] == n
    experiment.run()
    from benchmarl.models import model_config_registry

    if "dgat" not in model_config_registry:
        pytest.skip("model 'dgat' is not registered yet")
    dgat = model_config_registry["dgat"].get_from_yaml()
    dgat.num_cells = [16]
    dgat.hidden_channels = 8
    dgat.num_hops = 1
    experiment = _experiment(tmp_path / "dgat", "mappo", task, model=dgat, max_n_iters=1)
    experiment.run()
    assert experiment.n_iters_performed == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    "algorithm, metric, low, high",
    [
        ("dg_mappo", "dg_mappo_agents_average_degree", 0.0, 4.0),
        ("decpg", "decpg_agents_average_degree", 0.0, 4.0),
        ("matrpo", "matrpo_agents_links", 0.0, 10.0),
    ],
)
def test_visibility_topology_on_smacv2_specs(algorithm, metric, low, high, tmp_path):
    """topology=visibility reads the ally_visible flags of SMACv2's observation layout (from the task name)."""
    _require_algorithm(algorithm)
    experiment = _experiment(tmp_path, algorithm, "smacv2/protoss_5_vs_5",
                             algorithm_overrides={"topology": "visibility"})
    experiment.run()
    assert experiment.n_iters_performed == 2
    values = _csv_values(tmp_path, metric)
    assert values and all(low <= v <= high for v in values), values
    assert any(v > 0 for v in values)  # allies in sight of each other: the graph has links


# ------------------------------------------------------------------ the real game, where installed
def test_missing_starcraft2_says_what_to_set(monkeypatch):
    monkeypatch.delenv("SC2PATH", raising=False)
    assert "set SC2PATH" in starcraft2_missing_reason()
    monkeypatch.setenv("SC2PATH", "/nonexistent/StarCraftII")
    assert "is not a folder" in starcraft2_missing_reason()


@pytest.mark.slow
@pytest.mark.skipif(SC2_MISSING is not None, reason=SC2_MISSING or "")
@pytest.mark.parametrize("algorithm", OUR_ALGORITHMS)
def test_real_smacv2_protoss_5_vs_5(algorithm, tmp_path):
    from conftest import TINY

    _require_algorithm(algorithm)
    proc = run_cli(["run", f"algorithm={algorithm}", "task=smacv2/protoss_5_vs_5", *TINY], cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
