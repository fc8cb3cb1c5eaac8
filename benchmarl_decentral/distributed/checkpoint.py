"""Checkpoints of a distributed run, and torchrun's elastic restart from the newest complete one.

Layout (inside rank 0's run folder, BenchMARL's ``<save_folder>/<run>/``; with
several machines it must be on a filesystem every rank sees)::

    <run>/distributed.json                     the launch: algorithm, task, seed, world size, agents per
                                               group, the algorithm / model / critic_model config
    <run>/checkpoints_rank<r>/checkpoint_<frames>.pt   rank r's experiment state at <frames>

Every ``experiment.checkpoint_interval`` frames (and at the end with
``experiment.checkpoint_at_end``) each rank writes its own file with no
message to any other rank: the rank's whole ``Experiment.state_dict`` (its
networks, whose rows of the agents it does not own are stale and unread, the
optimizers' state, the counters, the random streams and the environments'
state that :mod:`benchmarl_decentral.resume` adds) and :data:`KEY`, the
rank's place in the launch and the bytes its action exchange has counted for
the next log row. The file is written to a temporary name and renamed, so a
file that exists is whole. A checkpoint is *complete* when the files of all
ranks exist for the same frames (:func:`complete_frames`); only complete
checkpoints are resumed, and a rank deletes its old files
(``experiment.keep_checkpoints_num``) only behind a newer complete checkpoint
(and once more after training, when every rank has written its last:
:meth:`RankCheckpoints.finish`).

Restart: torchrun (``--max-restarts K``) restarts every rank of the group when
one dies, with ``TORCHELASTIC_RESTART_COUNT`` > 0. Each rank then finds the
run of this launch (the ``distributed.json`` in the save folder whose launch
key, torchrun's ``TORCHELASTIC_RUN_ID``, is this launch's; see
:func:`launch_key`), takes its newest complete checkpoint and gives BenchMARL
its own file as ``experiment.restore_file``. BenchMARL then reuses the run
folder and name, the plugin's exact resume restores the optimizers, random
streams and environments, :func:`~benchmarl_decentral.runs.restore_curve`
keeps the JSON one curve, and :func:`~benchmarl_decentral.runs.truncate_scalars` drops the CSV rows of
the iterations after the checkpoint (the interrupted attempt logged them; the
resumed one logs them again). ``experiment.restore_file`` set by hand to any
rank's file of a complete checkpoint resumes the same way in a new launch.

A checkpoint that does not fit the launch (another algorithm, task, agent
groups or group sizes, world size, or other ``algorithm`` / ``model`` /
``critic_model`` settings), or is not a distributed one, is refused by
:func:`plan_resume` with one message before any process trains. A launch file
written before several groups (``group``, ``n_agents``) or without the config
still loads: its one group is compared, its settings are not.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from benchmarl_decentral.runs import write_atomic

#: Entry of a rank's checkpoint that says which rank of which launch wrote it.
KEY = "benchmarl_decentral_distributed"
#: The launch file in the run folder.
LAUNCH_FILE = "distributed.json"
_FILE = re.compile(r"checkpoint_(\d+)\.pt")
_RANK_DIR = re.compile(r"checkpoints_rank(\d+)")


#: The hydra config entries a checkpoint must have been written with (:attr:`Launch.config`).
CONFIG_KEYS: tuple[str, ...] = ("algorithm", "model", "critic_model")


@dataclass(frozen=True)
class Launch:
    """What a checkpoint must match to be resumed by a launch.

    Attributes:
        algorithm: ``algorithm=...``.
        task: ``task=...``.
        seed: the run's seed (a resume keeps the checkpoint's random streams).
        world_size: number of ranks.
        groups: agents per group, in the task's order (rank ``r`` owns the
            block of every group that
            :func:`~benchmarl_decentral.distributed.launch.partition_agents` gives).
        config: the launch's :data:`CONFIG_KEYS` entries of the hydra config,
            as plain JSON data (the networks' sizes, the algorithm's settings);
            empty: not recorded (nothing to compare).
        agent_mode: ``--agents``: ``all`` (a rank's checkpoint holds every
            agent's networks) or ``local`` (its block's only); a launch file
            without it was written by an ``all`` launch.
    """

    algorithm: str
    task: str
    seed: int
    world_size: int
    groups: dict[str, int]
    config: dict[str, Any] = field(default_factory=dict)
    agent_mode: str = "all"

    @classmethod
    def of(cls, *, algorithm: str, task: str, seed: int, sizes: Mapping[str, int], world_size: int,
           config: Mapping[str, Any] | None = None, agent_mode: str = "all") -> Launch:
        """The launch of ``algorithm`` on ``task`` with agents ``sizes`` over ``world_size`` ranks.

        ``config``: the hydra config's :data:`CONFIG_KEYS` entries (plain
        containers); stored as its JSON round trip, the form a launch file
        gives back.
        """
        plain = json.loads(json.dumps(dict(config or {}), default=str))
        return cls(algorithm, task, int(seed), int(world_size), {str(g): int(n) for g, n in sizes.items()}, plain,
                   str(agent_mode))


def saved_groups(saved: Mapping[str, Any]) -> dict[str, int] | None:
    """Agents per group of a launch record: its ``groups``; for a record written before several groups, its
    ``group`` and ``n_agents``; None when it has neither."""
    groups = saved.get("groups")
    if isinstance(groups, Mapping):
        return dict(groups)
    if "group" in saved:
        return {saved["group"]: saved.get("n_agents")}
    return None


def launch_key() -> str:
    """This torchrun launch, the same in every attempt (restart) and on every machine.

    torchrun's ``TORCHELASTIC_RUN_ID``: a fresh id per launch for a
    single-machine run (torchrun picks it), the ``--rdzv-id`` across machines
    (unique per job, as torchrun asks). The static rendezvous (``--master-port``
    given) has the run id ``none``: the master address and port then.
    """
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "")
    if run_id and run_id != "none":
        return run_id
    return f"static@{os.environ.get('MASTER_ADDR', socket.gethostname())}:{os.environ.get('MASTER_PORT', '')}"


def restart_count() -> int:
    """torchrun's ``TORCHELASTIC_RESTART_COUNT`` (0: first attempt, or not launched by torchrun)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def rank_file(run: Path, rank: int, frames: int) -> Path:
    """``<run>/checkpoints_rank<rank>/checkpoint_<frames>.pt``."""
    return Path(run) / f"checkpoints_rank{rank}" / f"checkpoint_{int(frames)}.pt"


def _frames_of(folder: Path) -> set[int]:
    if not folder.is_dir():
        return set()
    return {int(m.group(1)) for p in folder.iterdir() if (m := _FILE.fullmatch(p.name))}


def complete_frames(run: Path, world_size: int) -> list[int]:
    """Frames of the checkpoints that every one of the ``world_size`` ranks wrote, ascending."""
    common = None
    for rank in range(world_size):
        frames = _frames_of(Path(run) / f"checkpoints_rank{rank}")
        common = frames if common is None else common & frames
    return sorted(common or ())


def write_launch(run: Path, launch: Launch) -> None:
    """``<run>/distributed.json``: the launch and this launch's key (rank 0, once the run folder exists)."""
    data = {**asdict(launch), "launch_key": launch_key()}
    write_atomic(Path(run) / LAUNCH_FILE, lambda f: f.write(json.dumps(data, indent=2).encode()))


def read_launch(run: Path) -> dict[str, Any] | None:
    """The launch file of ``run`` (None when it has none or it is unreadable)."""
    try:
        with open(Path(run) / LAUNCH_FILE) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def find_run(save_folder: Path, key: str) -> Path | None:
    """The run folder in ``save_folder`` written by the launch ``key`` (the newest if several)."""
    found = [
        (p.stat().st_mtime, p.parent) for p in Path(save_folder).glob(f"*/{LAUNCH_FILE}")
        if (read_launch(p.parent) or {}).get("launch_key") == key
    ]
    return max(found)[1] if found else None


def _flat(node: Any, prefix: str) -> dict[str, Any]:
    """``{dotted key: value}`` of nested dicts (the hydra override names)."""
    if isinstance(node, Mapping) and node:
        return {key: value for k, v in node.items() for key, value in _flat(v, f"{prefix}.{k}").items()}
    return {prefix: node}


def _override(value: Any) -> str:
    """``value`` as the right-hand side of a hydra override."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(map(_override, value)) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{_override(v)}" for k, v in value.items()) + "}"
    return str(value)


#: A setting one launch has and the other lacks (:func:`config_differences`).
ABSENT = "(absent)"


def config_differences(saved: Mapping[str, Any] | None, launch: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, saved value, launch value)`` of every setting in which two launches' :attr:`Launch.config` differ.

    An entry that either side did not record (an older launch file, a
    launch built without its config) is not compared. A key one side lacks
    has the value :data:`ABSENT` there.
    """
    differ = []
    for entry in CONFIG_KEYS:
        if not isinstance(saved, Mapping) or entry not in saved or entry not in launch:
            continue
        a, b = _flat(saved[entry], entry), _flat(launch[entry], entry)
        differ += [(key, a.get(key, ABSENT), b.get(key, ABSENT)) for key in [*a, *(k for k in b if k not in a)]
                   if a.get(key, ABSENT) != b.get(key, ABSENT)]
    return differ


def check_match(saved: Mapping[str, Any], launch: Launch, run: Path) -> None:
    """Refuse a run whose launch differs from ``launch`` in what a rank's checkpoint depends on.

    Raises:
        ValueError: another algorithm, task, agent groups (names or sizes) or
            world size: the message names the difference and the launch that
            fits. Then, for the same algorithm: another setting of the
            algorithm, model or critic model (:func:`config_differences`;
            e.g. ``model.num_cells``, whose networks would not load): the
            message names each and the overrides that resume the run.
    """
    mine = {"algorithm": launch.algorithm, "task": launch.task, "groups": launch.groups,
            "world_size": launch.world_size, "agent_mode": launch.agent_mode}
    theirs = {**{name: saved.get(name) for name in mine}, "groups": saved_groups(saved),
              "agent_mode": saved.get("agent_mode", "all")}
    differ = [f"{name} {theirs[name]!r} (this launch: {mine[name]!r})" for name in mine if theirs[name] != mine[name]]
    if differ:
        groups = f" with the run's agent groups {theirs['groups']!r}" if theirs["groups"] != launch.groups else ""
        raise ValueError(
            f"the checkpoints of {run} do not fit this launch: {', '.join(differ)}. Resume them with "
            f"torchrun --nproc-per-node {saved.get('world_size')} -m benchmarl_decentral.distributed "
            f"{'--agents local ' if theirs['agent_mode'] == 'local' else ''}"
            f"algorithm={saved.get('algorithm')} task={saved.get('task')} ...{groups}, or start a new run "
            "without experiment.restore_file."
        )
    settings = config_differences(saved.get("config"), launch.config)
    if settings:
        what = ", ".join(f"{key}={_override(a)} (this launch: {_override(b)})" for key, a, b in settings)
        fix = " ".join(f"{key}={_override(a)}" for key, a, _ in settings if a != ABSENT) or "the run's overrides"
        raise ValueError(
            f"the checkpoints of {run} were written with other settings than this launch's: {what}; their networks "
            f"and optimizer state are those settings'. Resume them with the run's settings ({fix}), or start a "
            "new run without experiment.restore_file."
        )


@dataclass(frozen=True)
class ResumePlan:
    """Where a rank starts: a new run (``frames`` None) or rank files of ``run`` at ``frames``.

    Attributes:
        run: the run folder to resume (None: a new run).
        frames: the complete checkpoint to resume.
        note: what was found, for the log (empty for a plain new run).
    """

    run: Path | None = None
    frames: int | None = None
    note: str = ""

    def restore_file(self, rank: int) -> str | None:
        """This rank's file of the checkpoint (``experiment.restore_file``), or None for a new run."""
        return None if self.run is None else str(rank_file(self.run, rank, self.frames))


def plan_resume(restore_file: str | None, launch: Launch, *, save_folder: Path, restarts: int,
                key: str) -> ResumePlan:
    """What every rank computes before it joins the process group: resume or start, from the files alone.

    * torchrun restarted the ranks (``restarts`` > 0) and the run this launch
      (``key``) writes in ``save_folder`` has a complete checkpoint: the newest one;
    * else ``restore_file`` given: one rank's file of a distributed checkpoint,
      ``<run>/checkpoints_rank<r>/checkpoint_<frames>.pt``; its run must fit the
      launch and the checkpoint must be complete;
    * else: a new run.

    Raises:
        ValueError: ``restore_file`` is not a rank's checkpoint of a distributed
            run, its checkpoint is incomplete, or the run does not fit the
            launch (:func:`check_match`).
    """
    note = ""
    if restarts > 0:
        run = find_run(save_folder, key)
        if run is not None:
            check_match(read_launch(run) or {}, launch, run)
            complete = complete_frames(run, launch.world_size)
            if complete:
                return ResumePlan(run, complete[-1], f"restart {restarts}: resuming {run} from the checkpoint "
                                                     f"at {complete[-1]} frames")
            note = f"restart {restarts}: {run} has no complete checkpoint"
        else:
            note = f"restart {restarts}: no checkpoint of this launch in {save_folder}"
    if restore_file is None:
        return ResumePlan(note=f"{note}; starting a new run" if note else "")
    path = Path(restore_file).expanduser().resolve()
    file_match, dir_match = _FILE.fullmatch(path.name), _RANK_DIR.fullmatch(path.parent.name)
    run = path.parent.parent
    saved = read_launch(run) if file_match and dir_match else None
    if saved is None:
        raise ValueError(
            f"experiment.restore_file={restore_file} is not a checkpoint of a distributed run: give one "
            "rank's file, <run>/checkpoints_rank0/checkpoint_<frames>.pt, of a run that has "
            f"<run>/{LAUNCH_FILE} (a single-process checkpoint resumes with benchmarl resume FILE)."
        )
    check_match(saved, launch, run)
    frames = int(file_match.group(1))
    complete = complete_frames(run, launch.world_size)
    if frames not in complete:
        missing = [r for r in range(launch.world_size) if not rank_file(run, r, frames).is_file()]
        raise ValueError(
            f"the checkpoint at {frames} frames of {run} is incomplete: ranks {missing} did not write "
            f"theirs. Resume a complete one: {complete or 'none in this run'} frames."
        )
    return ResumePlan(run, frames, f"{note + '; ' if note else ''}resuming {run} from the checkpoint at "
                                   f"{frames} frames")


class RankCheckpoints:
    """Writes this rank's checkpoints (replaces ``experiment._save_experiment`` on this rank's experiment).

    Args:
        experiment: this rank's experiment.
        run: rank 0's run folder.
        rank: this rank.
        launch: the launch (recorded in every file).
        agents: this rank's agents, their indices in each group.
        exchange: the rank's :class:`~benchmarl_decentral.distributed.experiment.ActionExchange`
            or, with ``--agents local``, its
            :class:`~benchmarl_decentral.distributed.local.EnvBytesLog` (its
            byte count goes into the file).
    """

    def __init__(self, experiment, run: Path, rank: int, launch: Launch, agents: Mapping[str, list[int]],
                 exchange=None) -> None:
        self.experiment = experiment
        self.run = Path(run)
        self.rank = rank
        self.launch = launch
        self.agents = {group: [int(a) for a in indices] for group, indices in agents.items()}
        self.exchange = exchange
        self.folder = self.run / f"checkpoints_rank{rank}"
        self.written: int | None = None  # frames of this rank's last checkpoint
        experiment._save_experiment = self.save

    def save(self) -> Path:
        """Write ``checkpoint_<total_frames>.pt`` of this rank atomically; prune behind complete checkpoints."""
        exp = self.experiment
        self.folder.mkdir(exist_ok=True)
        for stale in self.folder.glob(".checkpoint_*.pt.tmp-*"):  # an attempt killed while writing
            stale.unlink(missing_ok=True)
        state = exp.state_dict()
        state[KEY] = {
            **asdict(self.launch),
            "rank": self.rank,
            "agents": self.agents,
            "env_bytes_sent": dict(self.exchange.sent) if self.exchange is not None else {},
        }
        path = rank_file(self.run, self.rank, exp.total_frames)
        write_atomic(path, lambda f: torch.save(state, f))
        self.written = int(exp.total_frames)
        self._prune(self.written)
        return path

    def finish(self) -> None:
        """After training: once every rank wrote its last checkpoint, prune behind it (``keep_checkpoints_num``).

        A rank that wrote its last file before the others could not delete its
        older files then (that checkpoint was not complete yet). One barrier,
        after training, on every rank alike (same config, same checkpoints).
        """
        if self.experiment.config.keep_checkpoints_num is None or self.written is None:
            return
        dist.barrier()
        self._prune(self.written)

    def _prune(self, written: int) -> None:
        keep = self.experiment.config.keep_checkpoints_num
        if keep is None:
            return
        complete = complete_frames(self.run, self.launch.world_size)
        newest = complete[-1] if complete else -1
        kept = set(complete[-keep:]) | {f for f in _frames_of(self.folder) if f > newest} | {written}
        for frames in _frames_of(self.folder) - kept:
            rank_file(self.run, self.rank, frames).unlink(missing_ok=True)

    def restore_extra(self, restore_file: str) -> None:
        """After BenchMARL loaded ``restore_file``: the rank's own entry (the action exchange's byte count)."""
        extra = torch.load(restore_file, map_location="cpu", weights_only=True, mmap=True).get(KEY, {})
        if self.exchange is not None:
            saved = extra.get("env_bytes_sent", {})
            if not isinstance(saved, dict):  # written before the per-group counts: one group's
                saved = {self.exchange.groups[0]: saved}
            # --env central counts fractional bytes per agent (rank 0's parts over its agents): kept as they are
            self.exchange.sent.update({group: value if isinstance(value, float) else int(value)
                                       for group, value in saved.items()})


def say(message: str) -> None:
    """One line on stderr, prefixed like the entry point's messages."""
    print(f"benchmarl_decentral.distributed: {message}", file=sys.stderr, flush=True)
