"""``python -m prompt_ot.data.shift_preview --preview OUT.png``: Fashion-MNIST and its four shifted test sets side by
side (:func:`prompt_ot.data.shifts.preview`; ``docs/demo/shifts.png``). A module of its own because it reads the
source through ``prompt_ot.data.datasets.fashion_mnist``, which itself imports ``prompt_ot.data.shifts``."""

from __future__ import annotations

import argparse
from pathlib import Path

from prompt_ot.data.datasets.fashion_mnist import load_arrays
from prompt_ot.data.shifts import preview


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m prompt_ot.data.shift_preview", description="Fashion-MNIST and its four shifted test sets"
    )
    parser.add_argument("--preview", type=Path, required=True, metavar="OUT.png", help="write the preview grid here")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path("data/fashion_mnist"),
        help="where torchvision downloads Fashion-MNIST when Debian's dataset-fashion-mnist is not installed",
    )
    args = parser.parse_args(argv)
    preview(load_arrays(args.cache), args.preview)
    print(f"wrote {args.preview}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
