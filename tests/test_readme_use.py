"""Every command of the README's "Use" section runs as written, in order, in one folder.

The commands are read from the README itself. Each ``benchmarl run`` /
``python -m benchmarl.run`` gets a tiny budget appended (``conftest.TINY``:
two iterations of 100 frames, 16-unit networks, two evaluation episodes,
``experiment.render=false`` so that no video is written: rendering is
BenchMARL's video path, tested with the run/evaluate/resume tests), minus
the keys the command sets itself. Nothing else is changed: shell globs
(``outputs/decpg_balance/*/checkpoints/checkpoint_*.pt``) expand as for a user.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, TINY


def use_commands() -> list[str]:
    """The commands of the first ```bash block under "## Use", comments dropped."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Use\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands = []
    for line in block.splitlines():
        command = line.split("  #", 1)[0].strip()
        if command:
            commands.append(command)
    return commands


def with_tiny_budget(command: str) -> str:
    """``command`` with :data:`conftest.TINY` appended to a training run (keys it sets are kept)."""
    words = shlex.split(command)
    if words[:2] != ["benchmarl", "run"] and words[:3] != ["python", "-m", "benchmarl.run"]:
        return command
    given = {w.split("=", 1)[0] for w in words if "=" in w}
    extra = [t for t in TINY if t.split("=", 1)[0] not in given]
    return command + " " + " ".join(shlex.quote(t) for t in extra)


def test_use_section_lists_the_commands_users_read():
    commands = use_commands()
    assert commands[0] == "benchmarl list"
    assert any(c.startswith("benchmarl evaluate ") for c in commands)
    assert all("experiment.loggers=[csv]" in c for c in commands if " run " in f" {c} " or "benchmarl.run" in c)


@pytest.mark.slow
def test_every_use_command_runs_as_written(tmp_path):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("HYDRA_FULL_ERROR", None)
    for command in use_commands():
        run = with_tiny_budget(command)
        result = subprocess.run(["bash", "-c", run], cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, f"{run}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        if command.startswith("benchmarl evaluate"):
            assert "Evaluation results logged" in result.stdout
        if command.startswith("benchmarl report"):
            assert (tmp_path / "report" / "report.md").is_file()
    assert list(tmp_path.glob("outputs/decpg_balance/*/checkpoints/checkpoint_*.pt"))
    assert len(list(tmp_path.glob("multirun/*/*/*/*.json"))) + len(list(tmp_path.glob("multirun/*/*/*/*/*.json"))) >= 4
