"""Glue shared by our algorithms."""

from __future__ import annotations

import shutil


def config_error(experiment, message: str) -> ValueError:
    """A ValueError for a config that does not fit the task, raised before training.

    BenchMARL has already created the run folder (holding only ``config.pkl``)
    when an algorithm is built; remove it so no half-written run is left behind.
    """
    folder = getattr(experiment, "folder_name", None)
    if (
        folder is not None
        and experiment.config.restore_file is None
        and folder.is_dir()
        and {p.name for p in folder.iterdir()} <= {"config.pkl"}
    ):
        shutil.rmtree(folder, ignore_errors=True)
    return ValueError(message)
