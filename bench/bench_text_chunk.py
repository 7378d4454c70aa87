"""Benchmark: peak memory of one CoOp training step, class texts in one pass vs `train.text_chunk` chunks.

The step is the trainer's own (``prompt_ot.train._packed_step``, as ``train`` runs it): CoOp's 4 context tokens,
500 ImageNet class names, batch 4, fp32 on the CPU. The backbone is ViT-B/16's text tower shrunk in depth (width
512, 8 heads, 77-token context, CLIP's vocabulary; 4 of its 12 layers by default) with a 2-layer ViT-B/16 image
tower, random weights; CoOp trains no image prompts, so its image forward keeps nothing for the backward pass.

Two measures, side by side in one run:
  * peak live tensor storage during the step: a ``TorchDispatchMode`` adds every op output's storage bytes when
    it first appears and subtracts them when the storage is freed (``weakref.finalize``); memory that existed
    before the step (weights, cached layouts) is not counted. Both settings in this process, one after the other,
    each after a warm-up step (momentum buffers, cached layouts); the gradients of the warm-up step, taken from the
    same prompts, are compared;
  * process peak RSS: each setting in its own subprocess (glibc's ``MALLOC_MMAP_THRESHOLD_`` fixed, so freed
    large blocks go back to the system), the rise of the peak RSS (``VmHWM``, reset through
    ``/proc/self/clear_refs`` before the step) above the RSS just before the measured step.

Writes reports/perf/text_chunk.md. Exits 1 if the gradients differ (beyond 1e-4 of their largest entry).

    python bench/bench_text_chunk.py [--classes 500] [--chunk 50] [--text-layers 4] [--batch 4] [--threads N]
                                     [--repeats 2]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench_train_step import Batch  # noqa: E402  (the one batch a step trains on)
from machine import machine_info, machine_lines, write_report  # noqa: E402

from prompt_ot.data.imagenet_classes import imagenet_classnames  # noqa: E402
from prompt_ot.methods import build_model, get_method  # noqa: E402
from prompt_ot.plan import LiveTensorMeter  # noqa: E402
from prompt_ot.train import RunSpec, TrainConfig, _packed_step, _Run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
GRAD_TOL = 1e-4  # relative to the largest gradient entry
MMAP_THRESHOLD = "131072"  # glibc: blocks from 128 KiB up are mmapped and returned to the system when freed


def backbone(text_layers: int):
    """ViT-B/16's text tower (width 512, 8 heads, context 77) with ``text_layers`` layers, and a 2-layer ViT-B/16
    image tower; random weights (seeded), eval mode, frozen."""
    import open_clip

    torch.manual_seed(0)
    clip = open_clip.model.CLIP(
        embed_dim=512,
        vision_cfg={"image_size": 224, "patch_size": 16, "width": 768, "layers": 2, "head_width": 64},
        text_cfg={"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": text_layers},
        quick_gelu=True,
    ).eval()
    for p in clip.parameters():
        p.requires_grad_(False)
    return clip, open_clip.get_tokenizer("ViT-B-16-quickgelu")


def make_run(clip, tokenizer, args, chunk: int) -> _Run:
    """The trainer's run of CoOp on one batch, its class texts encoded ``chunk`` at a time (0: one pass)."""
    generator = torch.Generator().manual_seed(args.classes)
    images = torch.randn(args.batch, 3, 224, 224, generator=generator)
    labels = torch.randint(0, args.classes, (args.batch,), generator=generator)
    method = get_method("coop")
    model = build_model(method, clip, tokenizer, seed=1)
    config = TrainConfig(
        epochs=1, batch_size=args.batch, lr=0.002, warmup_epochs=0, device="cpu", seed=1, text_chunk=chunk
    )
    run = _Run(RunSpec(method, model, Batch(images, labels), imagenet_classnames()[: args.classes], config), CPU)
    model.text_chunk = chunk  # what train_packed sets from the config
    return run


def step(run: _Run) -> None:
    run.begin_epoch(0, CPU)
    _packed_step([run], 0, CPU, "fp32", {}, True)


def grads(run: _Run) -> list[torch.Tensor]:
    return [p.grad.clone() for p in run.params]


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(args) -> None:
    """One setting in this process: a warm-up step, then the measured one; prints JSON."""
    clip, tokenizer = backbone(args.text_layers)
    run = make_run(clip, tokenizer, args, args.rss)
    step(run)
    gc.collect()
    before = rss_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        reset = True
    except OSError:
        reset = False
    step(run)
    print(json.dumps({"rss_before_kib": before, "hwm_kib": rss_kib("VmHWM"), "hwm_reset": reset}))


def rss_in_subprocess(args, chunk: int) -> dict:
    command = [sys.executable, __file__, "--rss", str(chunk), "--classes", str(args.classes)]
    command += ["--text-layers", str(args.text_layers), "--batch", str(args.batch), "--threads", str(args.threads)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD}
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    result["rise_kib"] = result["hwm_kib"] - result["rss_before_kib"]
    return result


def measure(args) -> dict:
    clip, tokenizer = backbone(args.text_layers)
    settings = {"plain": 0, "chunked": args.chunk}
    runs = {name: make_run(clip, tokenizer, args, chunk) for name, chunk in settings.items()}
    first = {}
    for name, run in runs.items():  # warm-up from the same prompts: their gradients must agree
        step(run)
        first[name] = grads(run)
    grad_diff = max(
        float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)) for a, b in zip(first["chunked"], first["plain"])
    )
    result = {"settings": settings, "grad_rel_diff": grad_diff, "tensor_peak_bytes": {}}
    for name, run in runs.items():
        gc.collect()
        with LiveTensorMeter() as tracker:
            step(run)
        result["tensor_peak_bytes"][name] = tracker.peak
    times = {name: [] for name in runs}
    for _ in range(args.repeats):  # untracked steps, alternately: the cost of the recomputation
        for name, run in runs.items():
            started = time.perf_counter()
            step(run)
            times[name].append(time.perf_counter() - started)
    result["step_s"] = {name: min(t) for name, t in times.items()}
    result["step_s_all"] = times
    result["rss"] = {name: rss_in_subprocess(args, chunk) for name, chunk in settings.items()}
    return result


def report(result: dict, args) -> str:
    peak, rss, secs = result["tensor_peak_bytes"], result["rss"], result["step_s"]
    mib = 1 << 20

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if b else "-"

    reset = all(r["hwm_reset"] for r in rss.values())
    rise = {name: r["rise_kib"] for name, r in rss.items()}
    hwm = {name: r["hwm_kib"] for name, r in rss.items()}
    lines = [
        "# Class texts in chunks: peak memory of a training step",
        "",
        f"One CoOp training step (the trainer's `_packed_step`), {args.classes} ImageNet class names, batch "
        f"{args.batch}, fp32, CPU. Backbone: ViT-B/16's text tower shrunk to {args.text_layers} layers (width 512, "
        "8 heads, 77-token context; the prompted texts are cut at the longest end-of-text token as always) and a "
        "2-layer ViT-B/16 image tower, random weights. `plain`: every class prompt in one pass (`text_chunk: 0`); "
        f"`chunked`: `text_chunk: {args.chunk}`, each chunk under activation checkpointing.",
        "",
        f"Command: `{result['command']}`",
        "",
        *machine_lines(result["machine"]),
        "",
        "| measure | plain | chunked | plain / chunked |",
        "|---|---|---|---|",
        f"| peak live tensor storage during the step | {peak['plain'] / mib:.1f} MiB | "
        f"{peak['chunked'] / mib:.1f} MiB | **{ratio(peak['plain'], peak['chunked'])}** |",
        f"| peak RSS rise during the step (own subprocess) | {rise['plain'] / 1024:.1f} MiB | "
        f"{rise['chunked'] / 1024:.1f} MiB | **{ratio(rise['plain'], rise['chunked'])}** |",
        f"| process peak RSS (own subprocess) | {hwm['plain'] / 1024:.1f} MiB | {hwm['chunked'] / 1024:.1f} MiB | "
        f"{ratio(hwm['plain'], hwm['chunked'])} |",
        f"| step time (fastest of {args.repeats} untracked, alternately) | {secs['plain']:.2f} s | "
        f"{secs['chunked']:.2f} s | "
        f"{ratio(secs['plain'], secs['chunked'])} |",
        "",
        f"Gradients of the warm-up step (same prompts): max difference {result['grad_rel_diff']:.1e} of the largest "
        f"entry (tolerance {GRAD_TOL:g}): {'equal' if result['grad_rel_diff'] <= GRAD_TOL else 'DIFFERENT'}.",
        "",
        f"The chunked step took {ratio(secs['chunked'], secs['plain'])} the plain step's time (the text forward "
        "runs twice; times on a shared machine are noisy, the memory figures are not).",
        "",
        "Peak live tensor storage counts the storages created during the step (a `TorchDispatchMode` over every op, "
        "freed ones subtracted through `weakref.finalize`), so the frozen weights and anything allocated before "
        "are left out. The RSS rows come from one subprocess per setting (glibc's `MALLOC_MMAP_THRESHOLD_="
        f"{MMAP_THRESHOLD}`): the rise is the peak RSS during the measured step (after a warm-up step) above the "
        "RSS just before it"
        + ("" if reset else "; VmHWM could not be reset here, so it is the whole process's peak")
        + "; the process peak includes the backbone and the Python runtime.",
        "",
        "Raw figures:",
        "",
        "```json",
        json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1),
        "```",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=500)
    parser.add_argument("--chunk", type=int, default=50, help="the chunked side's text_chunk")
    parser.add_argument("--text-layers", type=int, default=4, help="layers of the (width-512) text tower")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steady times on a shared machine)")
    parser.add_argument("--repeats", type=int, default=2, help="untracked timed steps of each setting, alternately")
    parser.add_argument("--out", default=str(ROOT / "reports" / "perf" / "text_chunk.md"))
    parser.add_argument("--rss", type=int, default=None, help=argparse.SUPPRESS)  # child: this text_chunk alone
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.rss is not None:
        child(args)
        return 0
    machine = machine_info()
    result = measure(args)
    result["command"] = (
        "python bench/bench_text_chunk.py "
        + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    ).strip()
    result["machine"] = machine
    text = report(result, args)
    write_report(args.out, text)
    print(text)
    return 0 if result["grad_rel_diff"] <= GRAD_TOL else 1


if __name__ == "__main__":
    sys.exit(main())
