"""The D-GAT BenchMARL model (``model=layers/dgat``, paper 000 sec. 3.1-3.2): tiny sizes, CPU."""

from __future__ import annotations

import pytest
import torch
from benchmarl.models import MlpConfig, model_config_registry, SequenceModelConfig
from tensordict import TensorDict
from torchrl.data import Composite, Unbounded

from benchmarl_decentral.models import dgat as dgat_module
from benchmarl_decentral.models.dgat import (
    dense_dgat_conv,
    DgatConfig,
    majority_graph,
    strongly_connected,
)
from benchmarl_decentral.nn import DGATConv

from conftest import run_cli

GROUP = "agents"
PATH5 = [[0, 1, 0, 0, 0], [1, 0, 1, 0, 0], [0, 1, 0, 1, 0], [0, 0, 1, 0, 1], [0, 0, 0, 1, 0]]


def radius_options(topology: str, **radius_kwargs) -> dict:
    """``topology`` plus the radius options when it is ``radius`` (other topologies refuse them)."""
    return {"topology": topology, **(radius_kwargs if topology == "radius" else {})}


def config(**overrides) -> DgatConfig:
    kwargs = {**DgatConfig.get_from_yaml().__dict__, "hidden_channels": 8, "num_cells": [16], **overrides}
    return DgatConfig(**kwargs)


def spec(n: int, f: int, key: str = "observation") -> Composite:
    return Composite({GROUP: Composite({key: Unbounded(shape=(n, f))}, shape=(n,))})


def build(cfg: DgatConfig, n: int = 3, f: int = 6, out: int = 4, *, share_params=False, centralised=False,
          out_spec=None):
    return cfg.get_model(
        input_spec=spec(n, f),
        output_spec=spec(n, out, "out") if out_spec is None else out_spec,
        agent_group=GROUP,
        input_has_agent_dim=True,
        n_agents=n,
        centralised=centralised,
        share_params=share_params,
        device="cpu",
        action_spec=None,
    )


def td_of(obs: torch.Tensor) -> TensorDict:
    batch = obs.shape[:-2]
    return TensorDict({GROUP: TensorDict({"observation": obs}, [*batch, obs.shape[-2]])}, list(batch))


def run(model, obs: torch.Tensor) -> torch.Tensor:
    return model(td_of(obs)).get(model.out_key)


# --------------------------------------------------------------- config / registry
def test_yaml_registry_and_hydra_composition():
    from benchmarl.hydra_config import load_model_config_from_hydra
    from hydra import compose, initialize_config_module

    assert model_config_registry["dgat"] is DgatConfig
    with initialize_config_module(config_module="benchmarl.conf", version_base=None):
        cfg = compose(config_name="config", overrides=["algorithm=mappo", "task=vmas/navigation", "model=layers/dgat"])
    assert load_model_config_from_hydra(cfg.model) == DgatConfig.get_from_yaml()


# --------------------------------------------------------------- eq. 13 and params
@pytest.mark.parametrize("batch", [(), (2,), (3, 2)])
def test_output_is_observation_concat_dgat_embedding(batch):
    """eq. 13: with no head the output is õ_i = [o_i || ô_i], ô = K D-GAT hops over the graph."""
    torch.manual_seed(0)
    n, f = 4, 5
    model = build(config(num_cells=None, topology="ring"), n=n, f=f, out=2 * f)
    obs = torch.randn(*batch, n, f)
    out = run(model, obs)
    assert out.shape == (*batch, n, 2 * f)
    torch.testing.assert_close(out[..., :f], obs)
    ring = torch.tensor([[0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0]], dtype=torch.bool)
    torch.testing.assert_close(out[..., f:], model.dgat(obs, ring))
    assert model.dgat.num_hops == n  # K = n by default (eq. 8)


def test_per_agent_parameters_are_stacked():
    per_agent = build(config(), n=3)
    shared = build(config(), n=3, share_params=True)
    for p in per_agent.dgat.parameters():
        assert p.shape[0] == 3
    for p in shared.dgat.parameters():
        assert p.shape[0] == 1
    assert sum(p.numel() for p in per_agent.dgat.parameters()) == 3 * sum(p.numel() for p in shared.dgat.parameters())
    assert all(p.shape[0] == 3 for p in per_agent.head.params.values(True, True))


@pytest.mark.parametrize("topology", ["full", "radius"])
def test_shared_parameters_equal_tied_per_agent_parameters(topology):
    torch.manual_seed(1)
    cfg = config(num_cells=None, **radius_options(topology, radius=1.0, position_dims=[0, 2]))
    shared = build(cfg, n=4, f=6, out=12, share_params=True)
    per_agent = build(cfg, n=4, f=6, out=12)
    with torch.no_grad():
        for p, q in zip(per_agent.dgat.parameters(), shared.dgat.parameters()):
            p.copy_(q.expand_as(p))
    obs = torch.randn(5, 4, 6)
    torch.testing.assert_close(run(shared, obs), run(per_agent, obs))


def test_agent_parameters_only_move_their_own_output_with_one_hop():
    torch.manual_seed(2)
    model = build(config(num_cells=None, num_hops=1, topology="full"), n=3, f=4, out=8)
    obs = torch.randn(6, 3, 4)
    before = run(model, obs)
    with torch.no_grad():
        for p in model.dgat.parameters():
            p[0].add_(0.5)
    after = run(model, obs)
    assert not torch.allclose(before[:, 0], after[:, 0])
    torch.testing.assert_close(before[:, 1:], after[:, 1:])


# --------------------------------------------------------------- graph
def test_radius_graph_is_recomputed_from_positions_every_call():
    n = 3
    model = build(config(topology="radius", radius=1.0, position_dims=[1, 3]), n=n, f=5)
    obs = torch.zeros(n, 5)
    obs[:, 1:3] = torch.tensor([[0.0, 0.0], [0.5, 0.0], [3.0, 0.0]])  # agent 2 out of range
    adj = model.communication_graph(td_of(obs))
    expected = torch.tensor([[0, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    assert torch.equal(adj, expected)
    obs[2, 1:3] = torch.tensor([0.5, 0.5])  # agent 2 moves next to both
    assert torch.equal(model.communication_graph(td_of(obs)), ~torch.eye(n, dtype=torch.bool))
    # the output follows the graph: agent 0's ô changes when agent 2 comes into range
    far, near = obs.clone(), obs.clone()
    far[2, 1:3] = torch.tensor([3.0, 0.0])
    assert not torch.allclose(run(model, far)[0], run(model, near)[0])


def test_positions_from_a_separate_key_in_a_sequence():
    """D-GAT after an MLP in a BenchMARL sequence reads positions from the observation key."""
    torch.manual_seed(3)
    n, f = 3, 6
    seq = SequenceModelConfig(
        model_configs=[
            MlpConfig(num_cells=[8], layer_class=torch.nn.Linear, activation_class=torch.nn.Tanh),
            config(topology="radius", radius=1.0, position_key="observation", position_dims=[0, 2]),
        ],
        intermediate_sizes=[7],
    )
    model = build(seq, n=n, f=f, out=4)
    dgat = model.models[1]
    assert (GROUP, "observation") in dgat.in_keys
    obs = torch.zeros(2, n, f)
    obs[..., 1, 0] = 5.0  # agent 1 far away
    adj = dgat.communication_graph(td_of(obs))
    assert adj[:, 0, 2].all() and not adj[:, 0, 1].any()
    assert run(model, obs).shape == (2, n, 4)


def test_locality_of_k_hops_through_the_model():
    """With K hops on a path, agent i's output moves iff the changed agent is within K hops."""
    torch.manual_seed(4)
    model = build(config(topology="custom", adjacency=PATH5, num_hops=2), n=5, f=3)
    obs = torch.randn(4, 5, 3)
    moved = obs.clone()
    moved[:, 4] += 1.0
    a, b = run(model, obs), run(model, moved)
    for i in range(5):
        changed = not torch.allclose(a[:, i], b[:, i])
        assert changed == (4 - i <= 2), i


def test_batch_graph_helpers():
    adj = torch.zeros(4, 3, 3, dtype=torch.bool)
    adj[:, 0, 1] = adj[:, 1, 0] = True
    adj[:3, 1, 2] = adj[:3, 2, 1] = True  # link 1-2 up in 3 of 4 graphs
    adj[:1, 0, 2] = True  # 0 <- 2 in 1 of 4
    assert torch.equal(strongly_connected(adj), torch.tensor([True, True, True, False]))
    expected = torch.tensor([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=torch.bool)
    assert torch.equal(majority_graph(adj), expected)


# --------------------------------------------------------------- vmap (TorchRL GAE)
@pytest.mark.parametrize("value, heads, concat", [("identity", 1, False), ("linear", 2, True), ("linear", 2, False)])
@pytest.mark.parametrize("batch", [(), (2,), (3, 2)])
def test_dense_conv_equals_sparse_layer(value, heads, concat, batch):
    torch.manual_seed(5)
    n = 4
    conv = DGATConv(5, 3, n, heads=heads, concat=concat, value=value)
    x = torch.randn(*batch, n, 5)
    for adj in (torch.rand(*batch, n, n) < 0.4, torch.zeros(*batch, n, n, dtype=torch.bool), torch.rand(n, n) < 0.5):
        torch.testing.assert_close(dense_dgat_conv(conv, x, adj), conv(x, adj), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("share_params", [False, True])
@pytest.mark.parametrize("topology", ["radius", "ring"])
def test_model_runs_under_vmap(share_params, topology):
    """TorchRL's GAE vmaps critics: a batched radius graph falls back to the dense path, same result."""
    torch.manual_seed(6)
    model = build(config(**radius_options(topology, radius=1.0, position_dims=[0, 2])), n=3, f=4,
                  share_params=share_params)
    td = td_of(torch.randn(2, 5, 3, 4))
    direct = model(td.clone()).get(model.out_key)
    vmapped = torch.vmap(model)(td.clone()).get(model.out_key)
    torch.testing.assert_close(vmapped, direct, rtol=1e-5, atol=1e-6)


def test_centralised_shared_critic_output_has_no_agent_dim():
    model = build(
        config(), n=3, share_params=True, centralised=True,
        out_spec=Composite({"state_value": Unbounded(shape=(1,))}),
    )
    assert run(model, torch.randn(7, 3, 6)).shape == (7, 1)


# --------------------------------------------------------------- extension point
def test_graph_builder_extension_point(monkeypatch):
    """A topology is one entry of GRAPH_BUILDERS (how ally visibility plugs in)."""
    monkeypatch.delitem(dgat_module.GRAPH_BUILDERS, "visibility", raising=False)  # not wired: refused at build
    with pytest.raises(ValueError, match="topology 'visibility' has no graph builder"):
        build(config(topology="visibility"))

    def visible(model, tensordict, features):  # agent i sees j iff feature 0 of both is positive
        seen = tensordict.get((model.agent_group, "observation"))[..., 0] > 0
        return seen.unsqueeze(-1) & seen.unsqueeze(-2)

    monkeypatch.setitem(dgat_module.GRAPH_BUILDERS, "visibility", visible)
    model = build(config(topology="visibility"))
    obs = torch.randn(2, 3, 6)
    obs[..., 0] = torch.tensor([1.0, 1.0, -1.0])
    assert torch.equal(model.communication_graph(td_of(obs))[0, :, 2], torch.tensor([False, False, False]))
    assert run(model, obs).shape == (2, 3, 4)
    # eq. 8 needs i in N^i: with add_self_loops=false the builder's graph must carry them
    no_loops = build(config(topology="visibility", add_self_loops=False))
    with pytest.raises(ValueError, match="lacks self loops"):
        run(no_loops, obs)
    obs[..., 0] = 1.0  # everyone visible, diagonal included: accepted as given
    assert run(no_loops, obs).shape == (2, 3, 4)


# --------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"topology": "radius", "radius": 0.5}, r"set model\.position_dims=\[start,stop\]"),
        ({"topology": "radius", "position_dims": [0, 2]}, r"set model\.radius"),
        ({"num_hops": 0}, "num_hops"),
        ({"heads": 0}, "heads must be an int >= 1"),
        ({"value": "softmax"}, "unknown value mode 'softmax'"),
        ({"add_self_loops": False}, r"N\^i including agent i itself.*set model\.add_self_loops=true"),
        ({"topology": "star"}, "unknown topology 'star'"),
        ({"topology": "knn_ring"}, r"set model\.k"),
        ({"topology": "custom"}, r"set model\.adjacency"),
        ({"position_dims": [2, 2]}, "position_dims must be"),
        ({"dgat_activation": "gelu"}, "unknown dgat_activation"),
    ],
)
def test_config_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        config(**overrides)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"topology": "radius", "radius": 0.5, "position_dims": [4, 8]}, r"position_dims=\[4, 8\] is outside"),
        ({"topology": "custom", "adjacency": [[0, 1], [1, 0]]}, "2 rows but the group has 3 agents"),
        ({"num_cells": None}, "num_cells=null outputs"),
    ],
)
def test_task_dependent_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        build(config(**overrides), n=3, f=6)


def test_global_state_input_is_refused():
    with pytest.raises(ValueError, match="agent dimension"):
        config().get_model(
            input_spec=Composite({"state": Unbounded(shape=(10,))}),
            output_spec=Composite({"state_value": Unbounded(shape=(1,))}),
            agent_group=GROUP, input_has_agent_dim=False, n_agents=3, centralised=True,
            share_params=True, device="cpu", action_spec=None,
        )


# --------------------------------------------------------------- end to end
@pytest.mark.slow
def test_mappo_with_dgat_actor_and_critic_from_the_cli(tmp_path, tiny):
    """Any algorithm can use model=layers/dgat (here mappo: shared actor, centralised shared critic, GAE under vmap)."""
    args = [a for a in tiny if not a.startswith("critic_model.")]
    result = run_cli(
        ["run", "algorithm=mappo", "task=vmas/navigation", "task.max_steps=20", "model=layers/dgat", "model@critic_model=layers/dgat",
         "model.topology=radius", "model.radius=0.5", "model.position_dims=[0,2]", "model.hidden_channels=8",
         "critic_model.topology=ring", "critic_model.num_cells=[16]", "critic_model.hidden_channels=8", *args],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(tmp_path.rglob("scalars/eval_reward_episode_reward_mean.csv"))
