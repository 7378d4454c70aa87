"""`python -m prompt_ot plan`: what a grid will cost before it runs (prompt_ot/plan.py; docs/plan.md).

Prints the jobs per stage and protocol, each kind of training job's estimated peak accelerator memory and time per
epoch, the grid's GPU-hours and its wall time on ``--gpus`` GPUs; with ``--gpu-memory`` it flags the kinds that would
not fit and names the settings that make them fit. Nothing is built or run: the estimates come from the backbone's
config and the cost model.
"""

from __future__ import annotations

import argparse

from prompt_ot.utils import args as check


def memory_size(text: str) -> int:
    from prompt_ot.errors import UserError
    from prompt_ot.plan import parse_memory

    try:
        return parse_memory(text)
    except UserError as err:
        raise argparse.ArgumentTypeError(str(err).replace(f"--gpu-memory {text!r} ", f"{text!r} ")) from err


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml", help="experiment parameters (default: params.yaml)")
    parser.add_argument(
        "--gpus", type=check.positive_int, default=1, help="GPUs the grid runs on, for its wall time (default: 1)"
    )
    parser.add_argument(
        "--gpu-memory",
        type=memory_size,
        metavar="SIZE",
        help="memory of one GPU (24GB, 24GiB, 16G, 80000MB): flag the training jobs that would not fit and name the "
        "setting that makes them fit",
    )
    parser.add_argument(
        "--precision-check",
        action="store_true",
        help="also show each kind of training job's memory and epoch time in fp32, bf16 and fp16",
    )


def run(args) -> int:
    from prompt_ot.config import backbone_entries, load_params, select_backbone
    from prompt_ot.plan import build_plan

    params = load_params(args.params)
    for i, (key, _) in enumerate(backbone_entries(params)):  # a list of backbones: each one's grid in turn
        if key is not None:
            print(("\n" if i else "") + f"== backbone {key}")
        plan = build_plan(
            select_backbone(params, key, args.params), args.params, gpus=args.gpus, memory=args.gpu_memory
        )
        print("\n".join(report_lines(plan, args.precision_check)))
    return 0


def report_lines(plan, precision_check: bool = False) -> list[str]:
    from dataclasses import replace

    from prompt_ot.plan import GPU_EFFICIENCY, STAGES, epoch_seconds, estimate, human_bytes, human_hours

    shape = plan.shape
    lines = [f"backbone {shape.name}: {shape.params / 1e6:.1f} M parameters (from its open_clip config)", ""]
    counts = plan.counts()
    lines.append("jobs per stage (and protocol):")
    for stage in STAGES:
        per = counts[stage]
        detail = ", ".join(f"{p} {n}" for p, n in per.items() if p != "all")
        lines.append(f"  {stage:<12} {sum(per.values()):>6}" + (f"   ({detail})" if detail else ""))
    lines.append(f"  {'total':<12} {len(plan.jobs):>6}")
    lines += ["", "training jobs by kind (estimated on one GPU; memory = peak accelerator memory of a step):"]
    columns = ("classes", 7), ("batch", 5), ("prec", 5), ("epochs", 6), ("jobs", 5), ("memory", 11), ("epoch", 9)
    lines.append(f"  {'method':<18} " + " ".join(f"{name:>{width}}" for name, width in columns))
    flagged = []
    for kind in plan.kinds.values():
        if kind.classes is None:
            memory, epoch = "unknown", "unknown"
        elif kind.estimate is None:
            memory, epoch = "-", "-"  # trains nothing (zero-shot)
        else:
            memory, epoch = human_bytes(kind.estimate.peak), human_hours(kind.epoch_s)
        mark = "  DOES NOT FIT" if kind.fits is False else ""
        lines.append(
            f"  {kind.method:<18} {kind.classes if kind.classes is not None else '?':>7} {kind.batch_size:>5} "
            f"{kind.precision:>5} {kind.epochs:>6} {kind.jobs:>5} {memory:>11} {epoch:>9}{mark}"
        )
        if kind.fits is False:
            flagged.append(kind)
        if precision_check and kind.job is not None:
            for precision in ("fp32", "bf16", "fp16"):
                est = estimate(shape, replace(kind.job, precision=precision))
                steps = max(1, kind.images // kind.batch_size)
                seconds = epoch_seconds(est, steps, precision=precision)
                fits = "" if plan.memory is None else ("  fits" if est.peak <= plan.memory else "  does not fit")
                lines.append(f"      in {precision}: {human_bytes(est.peak)}, {human_hours(seconds)} per epoch{fits}")
    for dataset, why in plan.unknown.items():
        lines.append(f"  class count of {dataset} unknown: {why}; its training jobs are not costed")
    if plan.memory is not None:
        lines.append("")
        if not flagged:
            lines.append(f"every training job fits in {human_bytes(plan.memory)}")
        for kind in flagged:
            what = f"{kind.method} on {kind.classes} classes (batch {kind.batch_size}, {kind.precision})"
            need = human_bytes(kind.estimate.peak)
            if kind.advice:
                lines.append(
                    f"does not fit in {human_bytes(plan.memory)}: {what} needs {need}; it fits with "
                    + " or ".join(kind.advice)
                )
            else:
                lines.append(
                    f"does not fit in {human_bytes(plan.memory)}: {what} needs {need}; no batch size, precision or "
                    "text_chunk makes it fit: use a GPU with more memory"
                )
    lines += [
        "",
        f"GPU time in all: {plan.total_seconds / 3600:.2f} GPU-hours; wall time on {plan.gpus} GPU(s): "
        f"{human_hours(plan.wall_seconds)} (greedy, longest job first, stage order ignored)",
        f"GPU figures assume an H100 at {GPU_EFFICIENCY:.0%} of its dense peak throughput (not measured here); "
        "see docs/plan.md",
    ]
    return lines
