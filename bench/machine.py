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


def machine_info() -> dict:
    import numpy as np
    import torch

    try:
        import ot

        pot = ot.__version__
    except ImportError:
        pot = None
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "platform": platform.platform(), "cpu": cpu_model(), "cores": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(), "torch": torch.__version__, "pot": pot, "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def machine_lines(info: dict) -> list[str]:
    """The report's machine paragraph, as Markdown lines."""
    gpu = info["gpu"] or "none"
    return [
        f"Run on {info['date']}: {info['cpu']}, {info['cores']} cores ({info['torch_threads']} torch threads), "
        f"GPU: {gpu}; load average at start {info['load_average_at_start']}; Python {info['python']}, "
        f"torch {info['torch']}, POT {info['pot']}, NumPy {info['numpy']}; {info['platform']}.",
    ]
