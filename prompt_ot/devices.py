"""Pick the device for a job: a GPU that no other prompt-ot job on this machine holds, else the CPU.

Snakemake's ``--resources gpu=N`` only caps how many GPU jobs run at once; it does not say which GPU a
job gets. Each job therefore claims one itself: it walks the visible GPUs (``CUDA_VISIBLE_DEVICES`` is
honoured, as SLURM sets it) and takes the first whose lock file it can ``flock``. The lock is held for
the life of the process and released by the kernel when the process ends, even on SIGKILL.

:func:`to_device` moves a host tensor to the training device without making the host wait for it.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from pathlib import Path

_held: list = []  # open lock files; kept referenced so the locks live as long as the process


def lock_dir() -> Path:
    return Path(os.environ.get("PROMPT_OT_GPU_LOCK_DIR", Path(tempfile.gettempdir()) / "prompt_ot_gpu_locks"))


def _visible_ids(count: int) -> list[str]:
    """Physical ids of the visible GPUs (used to name the locks so jobs with different masks agree)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        ids = [v.strip() for v in visible.split(",") if v.strip()]
        return ids[:count]
    return [str(i) for i in range(count)]


def claim_gpu(count: int, wait_seconds: float = 600.0, poll: float = 2.0) -> int:
    """Index (within the visible devices) of a GPU this process now holds exclusively."""
    folder = lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    ids = _visible_ids(count)
    deadline = time.monotonic() + wait_seconds
    while True:
        for index, physical in enumerate(ids):
            handle = open(folder / f"gpu{physical}.lock", "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            _held.append(handle)
            return index
        if time.monotonic() > deadline:
            raise TimeoutError(f"no free GPU among {ids} after {wait_seconds:.0f}s; lower --resources gpu=N")
        time.sleep(poll)


def pick_device(requested: str = "auto") -> str:
    """'cuda:<i>' for a claimed free GPU, or 'cpu' when there is none (or when 'cpu' is asked for)."""
    if requested != "auto":
        return requested
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{claim_gpu(torch.cuda.device_count())}"


def to_device(host, device):
    """``host`` (a CPU tensor) on ``device`` without waiting for it: pinned on CUDA, then copied asynchronously.

    A copy from pageable memory would stage through a driver buffer; from pinned memory it is queued on the
    stream like a kernel, so a training step stays one stream of device work.
    """
    import torch

    device = torch.device(device)
    if device.type == "cuda" and not host.is_cuda:
        host = host.pin_memory()
    return host.to(device, non_blocking=True)
