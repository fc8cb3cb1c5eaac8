"""Registration into BenchMARL's registries and hydra (one point, idempotent)."""

from __future__ import annotations

import pytest
from benchmarl.algorithms import algorithm_config_registry
from benchmarl.environments import task_config_registry
from benchmarl.hydra_config import load_algorithm_config_from_hydra
from benchmarl.models import model_config_registry
from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore

import benchmarl_decentral
from benchmarl_decentral import _registry

OURS = sorted(_registry.algorithm_configs())


def _snapshot():
    return (dict(algorithm_config_registry), dict(model_config_registry), dict(task_config_registry))


def test_register_is_idempotent():
    before = _snapshot()
    benchmarl_decentral.register()
    _registry._REGISTERED = False  # force the full path a second time
    benchmarl_decentral.register()
    assert _snapshot() == before
    for name, config in _registry.algorithm_configs().items():
        assert algorithm_config_registry[name] is config
        assert ConfigStore.instance().repo["algorithm"][f"{name}_config.yaml"].node is not None


@pytest.mark.parametrize("name", OURS)
def test_hydra_composition_equals_get_from_yaml(name):
    """The YAML hydra composes (through our SearchPathPlugin) == Config.get_from_yaml()."""
    with initialize_config_module(config_module="benchmarl.conf", version_base=None):
        cfg = compose(config_name="config", overrides=[f"algorithm={name}", "task=vmas/balance"])
    from_hydra = load_algorithm_config_from_hydra(cfg.algorithm)
    from_yaml = algorithm_config_registry[name].get_from_yaml()
    assert type(from_hydra) is type(from_yaml)
    assert from_hydra == from_yaml


def test_benchmarl_names_still_compose():
    with initialize_config_module(config_module="benchmarl.conf", version_base=None):
        cfg = compose(config_name="config", overrides=["algorithm=mappo", "task=vmas/balance"])
    assert type(load_algorithm_config_from_hydra(cfg.algorithm)).__name__ == "MappoConfig"


def test_name_clash_is_refused(monkeypatch):
    class Other:
        pass

    monkeypatch.setitem(algorithm_config_registry, "decpg", Other)
    monkeypatch.setattr(_registry, "_REGISTERED", False)
    with pytest.raises(RuntimeError, match="'decpg' is already taken"):
        _registry.register()


def test_conf_dir_lives_in_a_leaf_module():
    """CONF_DIR comes from benchmarl_decentral._paths, which imports nothing of the package (no import circle)."""
    import ast
    import pathlib

    import benchmarl_decentral
    from benchmarl_decentral import _paths, _registry

    assert _registry.CONF_DIR is _paths.CONF_DIR and (_paths.CONF_DIR / "algorithm" / "matrpo.yaml").is_file()
    root = pathlib.Path(benchmarl_decentral.__file__).parent
    tree = ast.parse((root / "_paths.py").read_text())
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)] + [
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m and m.startswith("benchmarl_decentral")], imported
    for path in root.rglob("*.py"):  # nobody reads CONF_DIR through the registry any more
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "benchmarl_decentral._registry":
                assert "CONF_DIR" not in [a.name for a in node.names], path
