"""Hydra SearchPathPlugin: makes BenchMARL's hydra apps see our configs.

Hydra imports every module under ``hydra_plugins`` before composing any app.
This one stays light: it only imports torch/BenchMARL (through
``benchmarl_decentral``) when the app being composed is BenchMARL's, i.e. when
the search path already holds BenchMARL's ``conf`` folder.
"""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

_OUR_CONF = "pkg://benchmarl_decentral.conf"


def _is_benchmarl_conf(path: str | None) -> bool:
    if not path:
        return False
    p = path.replace("\\", "/").rstrip("/")
    return p in ("pkg://benchmarl.conf", "pkg://benchmarl/conf") or p.endswith(
        "/benchmarl/conf"
    )


class BenchmarlDecentralSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        paths = [element.path for element in search_path.get_path()]
        if _OUR_CONF in paths or not any(_is_benchmarl_conf(p) for p in paths):
            return
        import benchmarl_decentral  # noqa: F401  (registers algorithms/models/tasks)

        search_path.append(provider="benchmarl-decentral", path=_OUR_CONF)
