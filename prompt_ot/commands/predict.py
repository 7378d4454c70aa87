"""`python -m prompt_ot predict`: classify images with a training run's prompts and any class list.

Reads the run folder (``prompts.safetensors`` with its provenance record), resolves the method, recipe and backbone
from the params file as ``evaluate`` does (default: the params.yaml whose ``paths.runs`` holds the run folder), and
writes a CSV: ``file``, then ``label_1``, ``prob_1`` ... ``label_K``, ``prob_K`` per image, most probable first
(softmax over the given classes of the model's logits, written rounded down to 6 decimals). Folders are searched
recursively for image files, in sorted order.
"""

from __future__ import annotations

import argparse

from prompt_ot.utils import args as check


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, type=check.existing_dir, help="a training run's folder")
    parser.add_argument(
        "--images", required=True, nargs="+", help="image files or folders (searched recursively for image files)"
    )
    classes = parser.add_mutually_exclusive_group(required=True)
    classes.add_argument("--classes", nargs="+", help="the class names to choose from (novel ones included)")
    classes.add_argument("--classes-file", type=check.existing_file, help="a text file of class names, one a line")
    parser.add_argument(
        "--top-k",
        type=check.positive_int,
        default=None,
        help="how many classes per image (default 5, or the number of classes when fewer)",
    )
    parser.add_argument("--out", required=True, type=check.out_file, help="the CSV file to write")
    parser.add_argument(
        "--params", default=None, help="the params file of the run (default: the params.yaml whose paths.runs holds it)"
    )
    parser.add_argument(
        "--template", type=check.template, default=None, help="class-name template (default: the run's dataset's)"
    )
    parser.add_argument(
        "--device", default="auto", type=check.device_name, help="auto (a free GPU, else the CPU), cpu, cuda:N"
    )


def csv_text(files, predictions) -> str:
    """The CSV of ``predictions`` (per file a list of (label, probability)), probabilities rounded down."""
    import csv
    import io
    import math

    top_k = len(predictions[0]) if predictions else 0
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file"] + [f"{kind}_{k}" for k in range(1, top_k + 1) for kind in ("label", "prob")])
    for file, row in zip(files, predictions):
        cells = [str(file)]
        for label, probability in row:
            cells += [label, f"{math.floor(probability * 1e6) / 1e6:.6f}"]
        writer.writerow(cells)
    return buffer.getvalue()


def run(args) -> int:
    from prompt_ot.errors import UserError
    from prompt_ot.predict import check_classnames, image_files, load_run, read_classes_file
    from prompt_ot.utils.io import atomic_write_text

    classnames = check_classnames(args.classes if args.classes is not None else read_classes_file(args.classes_file))
    top_k = min(5, len(classnames)) if args.top_k is None else args.top_k
    if top_k > len(classnames):
        raise UserError(
            f"--top-k {top_k} is larger than the number of classes ({len(classnames)}); give a smaller --top-k "
            "or more class names"
        )
    files = image_files(args.images)
    trained = load_run(args.run, params=args.params, device=args.device, template=args.template)
    predictions = []
    batch = 64
    for start in range(0, len(files), batch):
        predictions += trained.predict(files[start : start + batch], classnames, top_k=top_k)
    atomic_write_text(args.out, csv_text(files, predictions))
    print(f"wrote {args.out} ({len(files)} images, {len(classnames)} classes, {trained.method.name} prompts)")
    return 0
