"""Issue 17 item 3: topology options resolved per agent group (multi-group tasks, small groups).

Rules in ``benchmarl_decentral.consensus.groups``; the algorithms on real
BenchMARL + PettingZoo / VMAS multi-group tasks, tiny sizes, CPU.
"""

from __future__ import annotations

import logging

import pytest
import torch

from benchmarl_decentral.consensus.groups import check_group_topology, resolve_group_topologies

from conftest import make_experiment

USES = {"k": ("knn_ring",), "adjacency": ("custom",)}
KEYS = ("topology", "k", "adjacency")
STATIC = ("knn_ring", "ring", "full", "custom")
SIMPLE_TAG = {"adversary": ["adversary_0", "adversary_1", "adversary_2"], "agent": ["agent_0", "agent_1"]}


def _resolve(group_map=SIMPLE_TAG, overrides=None, **options):
    options = {"topology": "knn_ring", "k": 2, "adjacency": None, **options}
    return resolve_group_topologies(
        owner="decpg", task="simple_tag", group_map=group_map, options=options,
        overrides=check_group_topology(overrides, owner="decpg", keys=KEYS, topologies=STATIC),
        uses=USES, default_k=2,
    )


def _info_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "benchmarl_decentral" and r.levelno == logging.INFO]


# ------------------------------------------------------------------ the rules
def test_default_k_is_lowered_per_group_and_logged_once(caplog):
    caplog.set_level(logging.INFO, logger="benchmarl_decentral")
    resolved = _resolve()
    assert resolved["adversary"] == {"topology": "knn_ring", "k": 2, "adjacency": None}
    assert resolved["agent"] == {"topology": "knn_ring", "k": 1, "adjacency": None}
    assert _info_lines(caplog) == [
        "decpg: group 'agent' of task simple_tag has 2 agents, so the default k=2 is lowered to k=1 "
        "(k = n-1: the full graph of the group)"
    ]


def test_one_agent_group_has_no_graph_whatever_the_options(caplog):
    caplog.set_level(logging.INFO, logger="benchmarl_decentral")
    group_map = {"adversary": ["a0", "a1", "a2"], "agent": ["g0"]}
    # an explicit k and a custom adjacency sized for another group: a lone agent reads neither
    resolved = _resolve(group_map, topology="custom", k=None, adjacency=[[0, 1, 1], [1, 0, 1], [1, 1, 0]])
    assert resolved["agent"] == {"topology": "full", "k": None, "adjacency": None}
    assert resolved["adversary"]["adjacency"] == [[0, 1, 1], [1, 0, 1], [1, 1, 0]]
    resolved = _resolve(group_map, k=1)
    assert resolved["agent"]["topology"] == "full" and resolved["adversary"]["k"] == 1
    lines = _info_lines(caplog)
    assert lines == 2 * [
        "decpg: group 'agent' of task simple_tag has 1 agent: no neighbours, no mixing (its topology options are not used)"
    ]


def test_a_k_the_user_set_that_does_not_fit_is_refused_naming_every_group_and_the_fix():
    with pytest.raises(ValueError) as err:
        _resolve(k=3)
    assert str(err.value) == (
        "decpg: algorithm.k=3 does not fit group(s) 'adversary' (3 agents, so at most k=2), 'agent' (2 agents, so "
        "at most k=1) of task simple_tag (k = n-1 is the full graph); set algorithm.group_topology={adversary: "
        "{k: 2}, agent: {k: 1}} for these groups, or a smaller algorithm.k for all (the default k is lowered to "
        "n-1 per group by itself)"
    )
    with pytest.raises(ValueError, match=r"group_topology.agent.k=2 does not fit group\(s\) 'agent' \(2 agents"):
        _resolve(overrides={"agent": {"k": 2}})  # 2 is the default, but given for the group: the user's


def test_overrides_change_their_group_only_and_clear_options_the_topology_does_not_read():
    resolved = _resolve(overrides={"adversary": {"k": 1}, "agent": {"topology": "full"}})
    assert resolved == {
        "adversary": {"topology": "knn_ring", "k": 1, "adjacency": None},
        "agent": {"topology": "full", "k": None, "adjacency": None},
    }


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"adversaries": {"topology": "full"}}, r"names group\(s\) \['adversaries'\] that task simple_tag does not "
                                                r"have; its groups are \['adversary', 'agent'\]"),
        ({"agent": {"radius": 0.5}}, r"group_topology.agent has unknown option\(s\) \['radius'\]; a group may set "
                                     r"\['topology', 'k', 'adjacency'\]"),
        ({"agent": {"topology": "visibility"}}, "not a per-group topology; choose one of"),
        ({"agent": "full"}, "group_topology.agent must be a mapping"),
        ({"agent": {"topology": "ring", "k": 1}}, "group_topology.agent.k is read only with topology knn_ring, but "
                                                  "group 'agent' uses topology ring"),
        ({"agent": {"topology": "custom", "adjacency": [[0, 1, 1], [1, 0, 1], [1, 1, 0]]}},
         r"algorithm.group_topology.agent.adjacency has 3 rows but group 'agent' of task simple_tag has 2 agents"),
    ],
)
def test_bad_overrides_are_refused(overrides, match):
    with pytest.raises(ValueError, match=match):
        _resolve(overrides=overrides)


def test_global_adjacency_of_the_wrong_size_points_to_the_group_override():
    with pytest.raises(ValueError, match=r"algorithm.adjacency has 3 rows but group 'agent'.*group_topology=\{agent: "):
        _resolve(topology="custom", k=None, adjacency=[[0, 1, 1], [1, 0, 1], [1, 1, 0]])


def test_overrides_are_refused_with_the_task_wide_visibility_graph():
    with pytest.raises(ValueError, match="cannot be combined with algorithm.topology=visibility"):
        check_group_topology({"agent": {"topology": "full"}}, owner="decpg", keys=KEYS, topologies=STATIC,
                             topology="visibility")
    assert check_group_topology({}, owner="decpg", keys=KEYS, topologies=STATIC, topology="visibility") == {}


@pytest.mark.parametrize("algorithm", ["decpg", "dg_mappo", "matrpo"])
def test_configs_validate_group_topology_without_the_task(algorithm):
    from benchmarl.algorithms import algorithm_config_registry

    config_class = algorithm_config_registry[algorithm]
    kwargs = {**config_class.get_from_yaml().__dict__,
              "group_topology": {"agent": {"topology": "star"}}}
    with pytest.raises(ValueError, match=f"{algorithm}: group_topology.agent.topology='star' is not a per-group"):
        config_class(**kwargs)


def test_hydra_override_reaches_the_config():
    from benchmarl.hydra_config import load_algorithm_config_from_hydra
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="benchmarl.conf", version_base=None):
        cfg = compose(config_name="config", overrides=[
            "algorithm=decpg", "task=pettingzoo/simple_tag", "algorithm.group_topology={adversary:{topology:ring}}",
        ])
    config = load_algorithm_config_from_hydra(cfg.algorithm)
    assert config.group_topology == {"adversary": {"topology": "ring"}}


# ------------------------------------------------------------------ real tasks
@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["decpg", "dg_mappo", "matrpo", "magpo"])
def test_default_config_runs_on_pettingzoo_simple_tag(tmp_path, algorithm, caplog):
    """Groups of 3 adversaries and 2 good agents: decpg's default k=2 is k=1 for the good agents."""
    caplog.set_level(logging.INFO, logger="benchmarl_decentral")
    exp = make_experiment(tmp_path, algorithm=algorithm, task="pettingzoo/simple_tag")
    assert {g: len(a) for g, a in exp.group_map.items()} == {"adversary": 3, "agent": 2}
    exp.run()
    assert exp.n_iters_performed == 2
    if algorithm == "decpg":
        assert exp.algorithm.group_topologies["agent"]["k"] == 1
        assert torch.allclose(exp.algorithm.mixing_matrices["agent"], torch.full((2, 2), 0.5))
        assert torch.allclose(exp.algorithm.mixing_matrices["adversary"], torch.full((3, 3), 1 / 3))
        assert _info_lines(caplog) == [
            "decpg: group 'agent' of task simple_tag has 2 agents, so the default k=2 is lowered to k=1 "
            "(k = n-1: the full graph of the group)"
        ]
    else:
        assert _info_lines(caplog) == []  # their defaults (full, ring graphs; no graph) fit every group


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["decpg", "dg_mappo", "matrpo"])
def test_a_one_agent_group_trains_without_neighbours(tmp_path, algorithm, caplog):
    """vmas/simple_tag: 3 adversaries and 1 good agent; the lone agent mixes with nobody."""
    caplog.set_level(logging.INFO, logger="benchmarl_decentral")
    exp = make_experiment(tmp_path, algorithm=algorithm, task="vmas/simple_tag")
    assert {g: len(a) for g, a in exp.group_map.items()} == {"adversary": 3, "agent": 1}
    exp.run()
    assert exp.n_iters_performed == 2
    algo = exp.algorithm
    assert algo.group_topologies["agent"]["topology"] == "full"
    if algorithm == "decpg":
        assert exp.algorithm.mixing_matrices["agent"].tolist() == [[1.0]]
        assert exp.algorithm.callback.mixers[("agent", "actor")].adjacency.tolist() == [[False]]
    elif algorithm == "dg_mappo":
        assert algo.communication["agent"].static_adjacency.tolist() == [[False]]
    else:
        assert algo.links["agent"].numel() == 0
    assert _info_lines(caplog) == [
        f"{algorithm}: group 'agent' of task simple_tag has 1 agent: no neighbours, no mixing "
        "(its topology options are not used)"
    ]


def test_decpg_group_override_changes_that_groups_mixing_matrix_only(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    base = make_experiment(tmp_path / "a", task="pettingzoo/simple_tag").algorithm
    override = make_experiment(
        tmp_path / "b", task="pettingzoo/simple_tag",
        algorithm_overrides={"group_topology": {"adversary": {"topology": "custom",
                                                              "adjacency": [[0, 1, 0], [1, 0, 1], [0, 1, 0]]}}},
    ).algorithm
    # a path 0 - 1 - 2 with uniform weights 1/(deg + 1)
    path = torch.tensor([[1 / 2, 1 / 2, 0], [1 / 3, 1 / 3, 1 / 3], [0, 1 / 2, 1 / 2]])
    assert torch.allclose(override.mixing_matrices["adversary"], path)
    assert not torch.allclose(base.mixing_matrices["adversary"], path)
    assert torch.equal(override.mixing_matrices["agent"], base.mixing_matrices["agent"])


def test_matrpo_and_dg_mappo_group_override_changes_that_groups_links_only(tmp_path):
    path = {"adversary": {"topology": "custom", "adjacency": [[0, 1, 0], [1, 0, 1], [0, 1, 0]]}}
    for name in ("mbase", "mov", "dbase", "dov"):
        (tmp_path / name).mkdir()
    matrpo = {
        name: make_experiment(tmp_path / f"m{name}", algorithm="matrpo", task="pettingzoo/simple_tag",
                              algorithm_overrides=ov).algorithm
        for name, ov in [("base", {}), ("ov", {"group_topology": path})]
    }
    assert sorted(map(tuple, matrpo["base"].links["adversary"].tolist())) == [(0, 1), (0, 2), (1, 2)]  # ring
    assert sorted(map(tuple, matrpo["ov"].links["adversary"].tolist())) == [(0, 1), (1, 2)]  # the path
    assert torch.equal(matrpo["ov"].links["agent"], matrpo["base"].links["agent"])
    dg = {
        name: make_experiment(tmp_path / f"d{name}", algorithm="dg_mappo", task="pettingzoo/simple_tag",
                              algorithm_overrides=ov).algorithm
        for name, ov in [("base", {}), ("ov", {"group_topology": {"adversary": {"topology": "knn_ring", "k": 1}}})]
    }
    ring1 = dg["ov"].communication["adversary"].static_adjacency
    assert ring1.sum(-1).tolist() == [1, 1, 1]  # 1 neighbour each instead of the full graph's 2
    assert dg["base"].communication["adversary"].static_adjacency.sum(-1).tolist() == [2, 2, 2]
    assert torch.equal(dg["ov"].communication["agent"].static_adjacency,
                       dg["base"].communication["agent"].static_adjacency)


@pytest.mark.parametrize("algorithm", ["decpg", "dg_mappo", "matrpo"])
def test_unknown_group_is_refused_before_training(tmp_path, algorithm):
    with pytest.raises(ValueError, match=rf"{algorithm}: group_topology names group\(s\) \['good'\] that task "
                                         r"simple_tag does not have; its groups are \['adversary', 'agent'\]"):
        make_experiment(tmp_path, algorithm=algorithm, task="pettingzoo/simple_tag",
                        algorithm_overrides={"group_topology": {"good": {"topology": "full"}}})
    assert list(tmp_path.iterdir()) == []  # no half-written run folder left behind
