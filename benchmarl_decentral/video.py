"""``torchvision.io.write_video`` for torchvision releases that no longer have it.

BenchMARL's default experiment renders an evaluation video (``render: true``)
and gives it to every logger; TorchRL 0.11's CSV logger (``loggers: [csv]``,
``video_format="mp4"``) writes it with ``torchvision.io.write_video``.
torchvision 0.29, which pip resolves next to torch 2.14, no longer ships its
video IO (``torchvision.io`` has image functions only), so the first
evaluation of a default run fails with ``AttributeError: module
'torchvision.io' has no attribute 'write_video'``. No torchvision release
that has ``write_video`` installs beside torch 2.14, so a version constraint
cannot fix it.

:func:`install` fills the gap and nothing more. It is called when an
``Experiment`` that renders (``render: true``) to a CSV logger is set up
(:mod:`benchmarl_decentral.runs`), so other runs do not even import
torchvision; only when ``torchvision.io`` has no ``write_video``, it sets
:func:`write_video`, an H.264 MP4 encoder written on PyAV (``av``, a
dependency of BenchMARL itself, so always installed). Where torchvision still
has ``write_video``, nothing is changed. ``BENCHMARL_DECENTRAL_NO_VIDEO_SHIM=1``
turns it off.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

__all__ = ["install", "installed", "write_video"]

_ENV_OFF = "BENCHMARL_DECENTRAL_NO_VIDEO_SHIM"
_MARK = "_benchmarl_decentral_video_shim"


def write_video(
    filename: str,
    video_array: Any,
    fps: float,
    video_codec: str = "libx264",
    options: Optional[Dict[str, Any]] = None,
    **_unused: Any,
) -> None:
    """Write ``video_array`` (``[T, H, W, C]`` uint8, C = 3) to ``filename`` as a video file.

    The arguments TorchRL's CSV logger passes (``fps``, and ``video_codec`` /
    ``options`` from ``add_video(**kwargs)``) are honoured; audio arguments of
    torchvision's function are accepted and ignored (no audio is rendered).

    Args:
        filename: the file to write (its suffix picks the container, e.g. ``.mp4``).
        video_array: frames, a tensor or array of shape ``[T, H, W, 3]``, uint8.
        fps: frames per second.
        video_codec: the encoder, e.g. ``libx264``. Default: ``"libx264"``.
        options: encoder options (e.g. ``{"crf": "23"}``). Default: ``None``.
    """
    import av
    import numpy as np

    frames = video_array.detach().cpu().numpy() if hasattr(video_array, "detach") else np.asarray(video_array)
    frames = np.ascontiguousarray(frames.astype(np.uint8, copy=False))
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"write_video expects frames of shape [T, H, W, 3], got {tuple(frames.shape)}")
    rate = int(round(float(fps))) or 1
    with av.open(os.fspath(filename), mode="w") as container:
        stream = container.add_stream(video_codec, rate=rate)
        stream.width = frames.shape[2]
        stream.height = frames.shape[1]
        stream.pix_fmt = "yuv420p" if video_codec in ("libx264", "h264", "mpeg4") else stream.pix_fmt
        if options:
            stream.options = {str(k): str(v) for k, v in options.items()}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush the encoder
            container.mux(packet)


def installed() -> bool:
    """Whether ``torchvision.io.write_video`` is ours."""
    try:
        import torchvision.io
    except ImportError:
        return False
    return getattr(getattr(torchvision.io, "write_video", None), _MARK, False)


def install() -> bool:
    """Provide ``torchvision.io.write_video`` where torchvision lacks it; returns whether it did.

    Does nothing when torchvision is not installed, already has the function,
    or ``BENCHMARL_DECENTRAL_NO_VIDEO_SHIM`` is set to a non-empty value other than ``0``.
    """
    if os.environ.get(_ENV_OFF, "0") not in ("", "0"):
        return False
    import warnings

    try:
        with warnings.catch_warnings():  # torchvision's import warns about torch.jit.script
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
            import torchvision.io
    except ImportError:
        return False
    if hasattr(torchvision.io, "write_video"):
        return installed()
    setattr(write_video, _MARK, True)
    torchvision.io.write_video = write_video
    return True
