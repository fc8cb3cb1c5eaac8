"""Where the tensors a rank sends and receives point to point live: the host under gloo, the rank's GPU under nccl.

Every send and every receive buffer of the distributed transport and of the
environment backends goes through :func:`to_wire` / :func:`wire_device`;
what arrives is moved back to where its caller computes. Under gloo (every
tested launch) :func:`to_wire` is ``Tensor.cpu()``, exactly what the
transport did before nccl existed. Under nccl (``--backend nccl``, not run
yet: no multi-GPU machine was available) the wire device is the CUDA device
the launcher set for the rank (``torch.cuda.set_device(LOCAL_RANK)``), and
the algorithms' own computation stays where the experiment puts it.

Pure torch: no BenchMARL import.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def wire_device() -> torch.device:
    """The device of point-to-point tensors: the current CUDA device under nccl, else the host.

    Reads the default process group's backend (``dist.get_backend()``); the
    host when no process group is initialised.
    """
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def to_wire(tensor: Tensor) -> Tensor:
    """``tensor`` on :func:`wire_device`: ``tensor.cpu()`` under gloo (the same tensor when it is on the host)."""
    device = wire_device()
    return tensor.cpu() if device.type == "cpu" else tensor.to(device)
