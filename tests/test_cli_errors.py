"""What a user sees when a `benchmarl` command goes wrong: one line naming the fix, no traceback.

Several commands run in one Python process (``_calls``: each `main(argv)` call
gets its own captured stderr) to keep the suite fast; the import-time noise and
the errors raised while an experiment is built are checked in real
subprocesses, as the user runs them (no HYDRA_FULL_ERROR, no PYTHONWARNINGS).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import run_cli, TINY

from benchmarl_decentral.cli_checks import smacv2_missing

# Runs `main(argv)` for each argv of argv[1] (JSON) in this one process, stderr of each
# captured; modules named in argv[2] (JSON) are made unimportable first, as if not installed.
_CALLS = r"""
import contextlib, io, json, sys
calls, blocked = json.loads(sys.argv[1]), json.loads(sys.argv[2])

for name in blocked:  # what importlib (find_spec, import) sees for a package that is not installed
    sys.modules[name] = None
from benchmarl_decentral.cli import main
out = []
for argv in calls:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    out.append({"code": code, "stderr": err.getvalue()})
print("RESULTS" + json.dumps(out))
"""


def _calls(tmp_path, calls, blocked=()):
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "SC2PATH")}
    proc = subprocess.run([sys.executable, "-c", _CALLS, json.dumps(calls), json.dumps(list(blocked))],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.split("RESULTS", 1)[1])


def _one_line(result, code=2):
    lines = result["stderr"].splitlines()
    assert len(lines) == 1, result["stderr"]
    assert result["code"] == code
    return lines[0]


def _written(tmp_path):
    return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))


def test_misspelt_names_and_keys_get_did_you_mean(tmp_path):
    calls = [
        ["run", "algorithm=decgp", "task=vmas/balance"],
        ["run", "algorithm=decpg", "task=vmas/balanse"],
        ["run", "algorithm=decpg", "task=vmas/balance", "model=layers/mpl"],
        ["run", "algorithm=decpg", "task=vmas/balance", "model@critic_model=layers/dgta"],
        ["run", "algorithm=decpg", "task=vmas/balance", "algorithm.kk=3", "experiment.loggers=[csv]"],
        ["run", "-m", "algorithm=decpg,mapo", "task=vmas/balance", "experiment.loggers=[csv]"],
        ["run", "algorithm=decpg", "task=vmas/balance", "critic_model=layers/mlp", "experiment.loggers=[csv]"],
    ]
    results = _calls(tmp_path, calls)
    assert _one_line(results[0]) == (
        "benchmarl run: unknown algorithm 'decgp'; did you mean algorithm=decpg? "
        "(`benchmarl list algorithms` shows all)"
    )
    assert "did you mean task=vmas/balance?" in _one_line(results[1])
    assert "did you mean model=layers/mlp?" in _one_line(results[2])
    assert "did you mean model@critic_model=layers/dgat?" in _one_line(results[3])
    assert "unknown key algorithm.kk; did you mean algorithm.k?" in _one_line(results[4])
    assert "did you mean algorithm=mappo?" in _one_line(results[5])
    assert "model@critic_model=layers/mlp" in _one_line(results[6])
    assert not [p for p in _written(tmp_path) if not p.startswith("multirun")]


def test_missing_packages_name_the_extra_before_anything_is_written(tmp_path):
    calls = [
        ["run", "algorithm=decpg", "task=pettingzoo/simple_spread", "experiment.loggers=[csv]"],
        ["run", "algorithm=mappo", "task=smax/3m", "experiment.loggers=[csv]"],
        ["run", "-m", "algorithm=decpg", "task=vmas/balance,smax/3m", "experiment.loggers=[csv]"],
        ["run", "algorithm=decpg", "task=vmas/balance"],  # BenchMARL's default loggers: [csv, wandb]
        ["run", "algorithm=dg_mappo", "task=smacv2/protoss_5_vs_5"],  # the README's headline command
    ]
    results = _calls(tmp_path, calls, blocked=["pettingzoo", "jaxmarl", "wandb"])
    assert _one_line(results[0]) == (
        "benchmarl run: task=pettingzoo/simple_spread needs the pettingzoo package, which is not installed: "
        'pip install "benchmarl-decentral[pettingzoo]" (PettingZoo <1.25, the last with MPE)'
    )
    assert 'pip install "benchmarl-decentral[smax]"' in _one_line(results[1])
    assert "task=smax/3m" in _one_line(results[2])
    assert _one_line(results[3]) == (
        "benchmarl run: BenchMARL's default experiment.loggers=[csv, wandb] needs wandb, which is not installed: "
        "add experiment.loggers=[csv] (CSV files in the run folder), or pip install wandb"
    )
    if smacv2_missing():  # no StarCraft II here (CI): say what is missing, where to read, what runs instead
        line = _one_line(results[4])
        assert line.startswith("benchmarl run: task=smacv2/protoss_5_vs_5 needs StarCraft II and SMACv2, missing here:")
        assert "SC2PATH is not set" in line or "SC2PATH=" in line
        assert 'README section "SMAC family: SMAX and SMACv2"' in line
        assert "task=smax/smacv2_5_units" in line
    assert _written(tmp_path) == []


def test_list_shows_what_to_type_and_marks_what_is_not_installed(tmp_path):
    code = ("import sys\n" + _CALLS.split("from benchmarl_decentral.cli import main")[0]
            + "from benchmarl_decentral.cli import main\nsys.exit(main(['list']))\n")
    proc = subprocess.run([sys.executable, "-c", code, "[]", '["jaxmarl", "pettingzoo"]'], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()

    def row(entry):
        return next(line for line in lines if f"{entry} " in line or line.endswith(entry)).split()

    assert row("algorithm=decpg") == ["*", "algorithm=decpg"] and row("algorithm=mappo") == ["algorithm=mappo"]
    assert row("model=layers/dgat") == ["*", "model=layers/dgat"] and row("model=layers/mlp") == ["model=layers/mlp"]
    assert row("task=vmas/balance") == ["task=vmas/balance"]  # installed: no mark
    assert row("task=coordsum/3x10-30") == ["*", "task=coordsum/3x10-30"]
    assert row("task=smax/3m") == ["*", "task=smax/3m", "[smax]"]
    assert row("task=pettingzoo/simple_spread") == ["task=pettingzoo/simple_spread", "[pettingzoo]"]
    assert '[smax] not installed here: pip install "benchmarl-decentral[smax]"' in lines
    assert any(line.startswith('[pettingzoo] not installed here: pip install "benchmarl-decentral[pettingzoo]"')
               for line in lines)
    if smacv2_missing():
        assert row("task=smacv2/protoss_5_vs_5") == ["task=smacv2/protoss_5_vs_5", "[starcraft]"]
        assert any(line.startswith("[starcraft] not installed here: StarCraft II, SC2PATH and the smacv2 package")
                   for line in lines)


@pytest.mark.slow
def test_config_errors_are_one_line_without_noise_and_debug_shows_the_traceback(tmp_path):
    """As a user runs it: no warning lines (TorchRL's import, its PettingZoo loader, SDL's XDG_RUNTIME_DIR
    line on a machine without a display), no hydra line, one line naming the fix; exit status 2."""
    tiny = [t for t in TINY if not t.startswith(("model.", "critic_model."))]
    result = run_cli(["run", "algorithm=decpg", "task=pettingzoo/simple_spread", "algorithm.k=99", *tiny], tmp_path,
                     as_user=True)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "benchmarl run: decpg: algorithm.k=99 does not fit group(s) 'agent' (3 agents, so at most k=2) of task "
        "simple_spread (k = n-1 is the full graph); set algorithm.k=2 or less"
    ]
    assert not list(tmp_path.rglob("config.pkl"))  # no BenchMARL run folder

    debug = run_cli(["run", "--debug", "algorithm=decgp", "task=vmas/balance"], tmp_path, as_user=True)
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr and "Could not find 'algorithm/decgp'" in debug.stderr


@pytest.mark.slow
def test_topology_options_the_topology_does_not_read_are_refused(tmp_path):
    """Issue 16 item 5: an adjacency without topology=custom, visibility on a non-SMAC task."""
    tiny = [t for t in TINY if not t.startswith(("model.", "critic_model."))]
    calls = [
        ["run", "algorithm=decpg", "task=vmas/balance", "algorithm.adjacency=[[0,1,1,1],[1,0,1,1],[1,1,0,1],[1,1,1,0]]",
         *tiny],
        ["run", "algorithm=matrpo", "task=vmas/balance", "algorithm.k=3", *tiny],
        ["run", "algorithm=dg_mappo", "task=vmas/balance", "algorithm.topology=visibility", *tiny],
        ["run", "algorithm=mappo", "task=vmas/balance", "model=layers/dgat", "model.topology=visibility", *tiny],
        ["run", "algorithm=mappo", "task=vmas/balance", "model=layers/dgat", "model.radius=1.0", *tiny],
    ]
    results = _calls(tmp_path, calls)
    assert _one_line(results[0]) == (
        "benchmarl run: decpg: algorithm.adjacency=[[0, 1, 1, 1], [1, 0, 1, 1], [1, 1, 0, 1], [1, 1, 1, 0]] is read "
        "only with algorithm.topology=custom, but algorithm.topology=knn_ring would ignore it; remove "
        "algorithm.adjacency or set algorithm.topology=custom."
    )
    assert "matrpo: algorithm.k=3 is read only with algorithm.topology=knn_ring, but algorithm.topology=ring" \
        in _one_line(results[1])
    for result, key in ((results[2], "algorithm"), (results[3], "model")):
        line = _one_line(result)
        assert f"{key}.topology=visibility builds the communication graph from SMAC ally visibility, but task " \
               "vmas/balance is not a SMAC-family task" in line
        assert f"use {key}.topology=full, ring, knn_ring (with {key}.k)" in line
    assert "model.radius=1.0 is read only with model.topology=radius" in _one_line(results[4])
    assert not list(tmp_path.rglob("config.pkl"))  # refused before any BenchMARL run folder is kept


def test_bad_link_latency_is_one_line_before_anything_is_written(tmp_path):
    """algorithm.link_latency: an int >= 0, refused where nothing is mixed; matrpo and magpo have no such key."""
    tiny = [t for t in TINY if not t.startswith(("model.", "critic_model."))]
    calls = [
        ["run", "algorithm=decpg", "task=vmas/balance", "algorithm.link_latency=-1", *tiny],
        ["run", "algorithm=decpg", "task=vmas/balance", "algorithm.link_latency=1.5", *tiny],
        ["run", "algorithm=decpg", "task=vmas/balance", "algorithm.link_latency=2", "algorithm.consensus_params=[]",
         *tiny],
        ["run", "algorithm=dg_mappo", "task=vmas/balance", "algorithm.link_latency=2", "algorithm.consensus_params=[]",
         *tiny],
        ["run", "algorithm=matrpo", "task=vmas/balance", "algorithm.link_latency=2", *tiny],
    ]
    results = _calls(tmp_path, calls)
    assert _one_line(results[0]) == (
        "benchmarl run: decpg: link_latency must be an integer number of mixing steps >= 0, got -1; "
        "set e.g. algorithm.link_latency=2 (0: the synchronous DSGD step)"
    )
    assert "algorithm.link_latency=1.5" in _one_line(results[1]) and "Integer" in _one_line(results[1])
    for result, name, example in ((results[2], "decpg", "[actor,critic]"), (results[3], "dg_mappo", "[dgat,actor,critic]")):
        assert _one_line(result) == (
            f"benchmarl run: {name}: link_latency=2 delays the DSGD mixing messages, but consensus_params is [] "
            "(nothing is mixed, so it would do nothing); set algorithm.link_latency=0 or mix a network, "
            f"e.g. algorithm.consensus_params={example}"
        )
    assert "unknown key algorithm.link_latency" in _one_line(results[4])
    assert _written(tmp_path) == []


# ------------------------------------------------------------------ the pieces, in this process
def test_suggest_finds_the_closest_name_or_none():
    from benchmarl_decentral.cli_checks import group_choices, suggest

    assert suggest("decgp", group_choices("algorithm")) == "decpg"
    assert suggest("vmas/balanse", group_choices("task")) == "vmas/balance"
    assert suggest("balanse", ["vmas/balance", "vmas/navigation"]) == "vmas/balance"  # the task part alone
    assert suggest("layers/mpl", group_choices("model")) == "layers/mlp"
    assert suggest("qwertyuiop", group_choices("algorithm")) is None


def test_preflight_checks_the_wandb_logger_only_when_it_is_used(monkeypatch):
    from benchmarl_decentral.cli_checks import preflight

    monkeypatch.setitem(sys.modules, "wandb", None)  # what importlib sees when wandb is not installed
    base = ["algorithm=decpg", "task=vmas/balance"]
    assert "default experiment.loggers=[csv, wandb] needs wandb" in preflight(base)
    assert preflight([*base, "experiment.loggers=[csv]"]) is None
    assert "includes wandb" in preflight([*base, "experiment.loggers=[csv,wandb]"])
    assert preflight([*base, "experiment=my_experiment"]) is None  # its loggers are unknown here
    assert preflight(["algorithm=decgp", "task=vmas/balance"]) is None  # hydra names the misspelling first


def test_smacv2_requirements_and_stand_in(monkeypatch, tmp_path):
    from benchmarl_decentral.cli_checks import smacv2_missing, smax_alternative

    assert smax_alternative("smacv2/zerg_10_vs_11") == "smax/smacv2_10_units"
    assert smax_alternative("smacv2/protoss_20_vs_23") == "smax/smacv2_20_units"
    monkeypatch.setitem(sys.modules, "smacv2", None)
    monkeypatch.setenv("SC2PATH", str(tmp_path))
    assert smacv2_missing() == ["the smacv2 package"]
    monkeypatch.setenv("SC2PATH", str(tmp_path / "nowhere"))
    assert smacv2_missing()[0] == f"StarCraft II (SC2PATH={tmp_path / 'nowhere'} is not a folder)"


@pytest.mark.parametrize(
    "config, overrides, match",
    [
        ("decpg", {"topology": "ring", "adjacency": [[0, 1], [1, 0]]}, r"algorithm\.adjacency=.*algorithm\.topology=custom"),
        ("decpg", {"topology": "full", "k": 3}, r"algorithm\.k=3 is read only with algorithm\.topology=knn_ring"),
        ("decpg", {"mixing_graph": "majority"}, r"mixing_graph=majority is read only with .*=visibility"),
        ("matrpo", {"topology": "full", "adjacency": [[0, 1], [1, 0]]}, r"remove algorithm\.adjacency"),
        ("dg_mappo", {"topology": "ring", "radius": 1.0}, r"algorithm\.radius=1\.0 .* algorithm\.topology=radius"),
        ("dgat", {"topology": "ring", "graph_kwargs": {"layout": "smax"}},
         r"model\.graph_kwargs=.* model\.topology=visibility"),
    ],
)
def test_python_api_refuses_topology_options_the_topology_does_not_read(config, overrides, match):
    from benchmarl_decentral.algorithms import DecpgConfig, DgMappoConfig, MatrpoConfig
    from benchmarl_decentral.models.dgat import DgatConfig

    cls = {"decpg": DecpgConfig, "matrpo": MatrpoConfig, "dg_mappo": DgMappoConfig, "dgat": DgatConfig}[config]
    fields = {**cls.get_from_yaml().__dict__, **overrides}
    with pytest.raises(ValueError, match=match):
        cls(**fields)
    fields.update(topology={"radius": "radius", "graph_kwargs": "visibility", "k": "knn_ring",
                            "mixing_graph": "visibility"}.get(next(k for k in overrides if k != "topology"), "custom"))
    if fields["topology"] == "radius":
        fields["position_dims"] = [0, 2]
    cls(**fields)  # the same option with the topology that reads it is accepted
