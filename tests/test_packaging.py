"""The wheel ships every module, the YAML of conf/, the hydra plugin and the console script."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import REPO


def test_wheel_contents(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("benchmarl_decentral-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())

    yamls = {f"benchmarl_decentral/conf/{p.relative_to(REPO / 'conf')}" for p in (REPO / "conf").rglob("*.yaml")}
    assert "benchmarl_decentral/conf/algorithm/decpg.yaml" in yamls
    assert yamls <= names, sorted(yamls - names)

    modules = {str(p.relative_to(REPO)) for p in (REPO / "benchmarl_decentral").rglob("*.py") if "conf" not in p.parts}
    modules |= {str(p.relative_to(REPO)) for p in (REPO / "hydra_plugins").rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    assert "hydra_plugins/__init__.py" not in names  # hydra_plugins must stay a namespace package

    (entry_points,) = [n for n in names if n.endswith("entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "benchmarl = benchmarl_decentral.cli:main" in text


def test_installed_package_finds_its_conf():
    from benchmarl_decentral._registry import CONF_DIR

    assert (CONF_DIR / "algorithm" / "decpg.yaml").is_file()


def test_plain_install_composes_with_benchmarl(tmp_path):
    """`pip install .` (not editable): hydra finds our plugin and conf from site-packages."""
    import os

    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q",
         "--target", str(target), str(REPO)],
        check=True, capture_output=True,
    )
    env = dict(os.environ, PYTHONPATH=str(target))
    probe = subprocess.run(
        [sys.executable, "-c", "import benchmarl_decentral, hydra_plugins; print(benchmarl_decentral.__file__); print(list(hydra_plugins.__path__))"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
    )
    assert probe.stdout.splitlines()[0].startswith(str(target))
    composed = subprocess.run(
        [sys.executable, "-m", "benchmarl.run", "algorithm=decpg", "task=vmas/balance", "--cfg", "job"],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )
    assert composed.returncode == 0, composed.stderr[-3000:]
    assert "mix_order: mix_then_step" in composed.stdout
