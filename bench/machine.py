"""What every benchmark report states about where it ran: date, CPU, cores, load, library versions, GPU."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pot_version() -> str | None:
    try:
        import ot

        return ot.__version__
    except ImportError:
        return None


def machine_info(packages: tuple[str, ...] = ()) -> dict:
    """Date, CPU, cores, load, Python/torch/POT/NumPy versions, torch threads, GPU; plus ``packages``' versions."""
    import importlib.metadata

    import numpy as np
    import torch

    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pot": pot_version(),
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    for package in packages:
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            info[package] = None
    return info


def write_report(path: str | Path, text: str) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")


def machine_lines(info: dict) -> list[str]:
    """The report's machine paragraph, as Markdown lines."""
    gpu = info["gpu"] or "none"
    return [
        f"Run on {info['date']}: {info['cpu']}, {info['cores']} cores ({info['torch_threads']} torch threads), "
        f"GPU: {gpu}; load average at start {info['load_average_at_start']}; Python {info['python']}, "
        f"torch {info['torch']}, POT {info['pot']}, NumPy {info['numpy']}; {info['platform']}.",
    ]
