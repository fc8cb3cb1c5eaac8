"""A launch over several nodes with torchrun's rendezvous (issue 18, item 1), two "nodes" on this machine.

``torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint HOST:PORT ...`` run twice, as
on two machines: each torchrun agent joins the rendezvous, which assigns the node ranks and the global ranks,
and the entry point joins the gloo group through the agents' store (``env://``). Both agents run here, on
127.0.0.1 and one filesystem (the run folder is rank 0's; a launch across machines needs
``experiment.save_folder`` on a filesystem every node sees only for checkpoints). The run must equal the
single-process run of the same config.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest

from conftest import REPO

import test_distributed
import test_distributed_matrpo


def _logged(run, name):
    with open(run / run.name / "scalars" / f"{name}.csv") as f:
        return [float(row[1]) for row in csv.reader(f)]


@pytest.mark.slow
@pytest.mark.parametrize("launch", [
    ["--agents", "local", *test_distributed.ENTRY],  # decpg, each node building its 4 agents only
    ["--agents", "local", *test_distributed_matrpo.ENTRY],  # matrpo: ADMM link values between the nodes
], ids=["decpg_local", "matrpo_local"])
def test_two_torchrun_nodes_joined_by_a_c10d_rendezvous_train_like_one_process(tmp_path, launch):
    from benchmarl_decentral.distributed import free_port

    single = test_distributed.single_run([arg for arg in launch if not arg.startswith("--") and arg != "local"],
                                         tmp_path / "single")

    for name in ("dist", "scratch"):
        (tmp_path / name).mkdir()
    endpoint = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path / "scratch"),
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    nodes = []
    for node in range(2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "two_nodes",
               "--max-restarts", "0", "-m", "benchmarl_decentral.distributed",
               *launch, f"experiment.save_folder={tmp_path / 'dist'}"]
        log = open(tmp_path / f"node{node}.log", "w")
        nodes.append((subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT), log))
    try:
        for process, _ in nodes:
            assert process.wait(timeout=300) == 0, "\n".join(
                (tmp_path / f"node{i}.log").read_text()[-3000:] for i in range(2))
    finally:
        for process, log in nodes:
            process.kill()
            log.close()

    (run,) = (tmp_path / "dist").iterdir()  # rank 0's run folder, whichever node it was on
    # the other rank kept nothing (torchrun's agents keep their own torchelastic_* folders there)
    assert [p for p in (tmp_path / "scratch").iterdir() if not p.name.startswith("torchelastic_")] == []
    assert (run / f"{run.name}.json").is_file()
    single_run = single.folder_name
    for name in ("collection_reward_reward_mean", "eval_reward_episode_reward_mean"):
        assert _logged(run, name) == _logged(single_run, name)
    assert min(_logged(run, "comm_train_network_bytes_per_agent")) > 0  # the training messages crossed the nodes
