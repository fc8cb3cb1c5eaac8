"""DecPG's perturbed test env (paper 002 sec. 4): observation noise with a per-feature sample std."""

from __future__ import annotations

import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torchrl.data import Categorical

from benchmarl_decentral.environments.perturbation import PerturbedPolicy

OBS, ACT = ("agents", "observation"), ("agents", "action")


class _Recorder(torch.nn.Module):
    """A policy that remembers the observation it was given and always takes action 0."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, obs):
        self.seen.append(obs.clone())
        return torch.zeros(obs.shape[:-1], dtype=torch.long)


def _wrap(c=0.5, eps=0.0, seed=0):
    rec = _Recorder()
    policy = TensorDictModule(rec, in_keys=[OBS], out_keys=[ACT])
    wrapped = PerturbedPolicy(policy, observation_keys=[OBS], action_keys=[ACT],
                              action_specs=[Categorical(5)], c=c, eps=eps,
                              generator=torch.Generator().manual_seed(seed))
    return wrapped, rec


def _obs(n_envs, n_agents, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_envs, n_agents, 3, generator=g)
    return x * torch.tensor([100.0, 0.01, 0.0]) + torch.tensor([5.0, -1.0, 7.0])  # a constant feature 2


def test_noise_std_is_c_times_each_features_sample_std():
    wrapped, rec = _wrap(c=0.5)
    obs = _obs(2048, 4, seed=1)
    td = wrapped(TensorDict({OBS: obs.clone()}, batch_size=[2048]))
    torch.testing.assert_close(td.get(OBS), obs)  # the env and the logs keep the clean observation
    noise = (rec.seen[0] - obs).reshape(-1, 3)
    sample_std = obs.reshape(-1, 3).std(0, correction=0)
    ratio = noise.std(0)[:2] / (0.5 * sample_std[:2])
    assert torch.all((ratio - 1).abs() < 0.05), ratio  # 8192 samples: ~1% standard error
    assert float(noise[:, 2].abs().max()) == 0.0  # a feature that never varies gets no noise
    # one scalar per agent and step would give feature 1 noise on feature 0's scale
    assert float(noise[:, 1].std()) < 1e-2


def test_sample_std_runs_over_every_observation_seen():
    wrapped, _ = _wrap()
    a, b = _obs(16, 3, seed=2), _obs(16, 3, seed=3) * 2 + 10
    wrapped.feature_std(OBS, a)
    std = wrapped.feature_std(OBS, b)
    pooled = torch.cat([a, b]).reshape(-1, 3).std(0, correction=0)
    torch.testing.assert_close(std, pooled, rtol=1e-5, atol=1e-6)


def test_random_actions_at_rate_eps_without_observation_noise():
    wrapped, rec = _wrap(c=0.0, eps=0.3)
    obs = _obs(4000, 2, seed=4)
    td = wrapped(TensorDict({OBS: obs.clone()}, batch_size=[4000]))
    assert torch.equal(rec.seen[0], obs)
    replaced = (td.get(ACT) != 0).float().mean()  # a random action is 0 with prob 1/5
    assert abs(float(replaced) - 0.3 * 4 / 5) < 0.02
