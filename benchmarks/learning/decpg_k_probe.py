"""Diagnostic launcher for benchmarks/learning/decpg_k_findings.md: ``benchmarl`` with VMAS simple spread patched.

Not a task of the plugin: it changes the environment inside this process only, to measure what
the critic needs on VMAS simple spread, then runs the ``benchmarl`` CLI with the given arguments::

    RSCALE=0.01 TRUNC=1 python benchmarks/learning/decpg_k_probe.py run algorithm=mappo \\
        task=vmas/simple_spread task.n_agents=8 ...

* ``RSCALE=s``: VMAS simple spread's reward multiplied by ``s`` (training and evaluation).
* ``TRUNC=1``: TorchRL's ``VmasWrapper`` reports ``terminated = done``; simple spread has no
  terminal state, so ``terminated`` is set to False (``done`` still ends the episode at
  ``max_steps``) and GAE bootstraps at the time limit.
"""

import os
import runpy
import sys

import torch

if os.environ.get("RSCALE"):
    import importlib

    _scale = float(os.environ["RSCALE"])
    _scenarios = importlib.import_module("vmas.scenarios")  # `vmas.scenarios` the attribute is a list
    _load = _scenarios.load

    def _scaled_load(name):
        module = _load(name)  # VMAS loads a fresh module per environment
        if "simple_spread" in str(name):
            reward = module.Scenario.reward
            module.Scenario.reward = lambda self, agent: reward(self, agent) * _scale
        return module

    _scenarios.load = _scaled_load

if os.environ.get("TRUNC"):
    from torchrl.envs.libs.vmas import VmasWrapper

    _step = VmasWrapper._step

    def _truncating_step(self, tensordict):
        out = _step(self, tensordict)
        out.set("terminated", torch.zeros_like(out.get("terminated")))
        return out

    VmasWrapper._step = _truncating_step

sys.argv[0] = "benchmarl"
runpy.run_module("benchmarl_decentral.cli", run_name="__main__")
