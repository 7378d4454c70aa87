"""GPU benchmark: training-step throughput, one complete base-to-novel run with and without packing, and a
projection of the 33-run base-to-novel table, all on one GPU with ViT-B/16 random weights (nothing downloaded).

Run unattended through ``bench/gpu.sh`` (which also records nvidia-smi); it prints and writes
reports/perf/gpu.md with the date and the GPU's name.

1. Step throughput: the trainer's own step (``prompt_ot.train._packed_step``: bf16 autocast, fused SGD,
   views augmented on the GPU from a uint8 store, OT on the device, frozen image features from a cache)
   for packs of 1, 3 and 8 runs at 50 and 500 classes, in training images per second. One step is also run
   under ``torch.cuda.set_sync_debug_mode("error")``, which raises on any host synchronisation.
2. A complete base-to-novel run: train (full epochs) on 16 shots of 50 base classes (800 images, 200
   steps per epoch, as Caltech101 or FGVC Aircraft), then evaluate the prompted model on 2,500 test images
   (base + novel). Measured for one run alone and for three seeds packed in one process.
3. Projection: the 33 runs of the paper's base-to-novel table (11 datasets x 3 seeds, each dataset's own
   base-class count and test-set size from its recipe), priced at the measured packed step time (linear
   in the class count between the two measured counts) and the measured evaluation throughput. It is an
   estimate built from measured parts and is labelled as such in the report.

Two parts, each well inside a 10-minute command: ``--part steps`` (1, the evaluation throughput and the
projection) and ``--part complete`` (2). Each writes its raw figures to ``<out>.<part>.json``; the report
is rebuilt from whichever parts are there, so they may run in separate sessions. ``--part all`` runs both.

    python bench/bench_gpu.py [--part all|steps|complete] [--epochs 40] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from machine import machine_info, machine_lines  # noqa: E402

from prompt_ot.data.augment import TrainViews  # noqa: E402
from prompt_ot.data.imagenet_classes import imagenet_classnames  # noqa: E402
from prompt_ot.data.registry import dataset_spec  # noqa: E402
from prompt_ot.methods import build_model, get_method  # noqa: E402
from prompt_ot.models.backbone import load_backbone  # noqa: E402
from prompt_ot.train import RunSpec, TrainConfig, _packed_step, _Run, train_packed  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BACKBONE = "ViT-B-16-quickgelu"
SHOTS, BATCH = 16, 4
B2N_DATASETS = (
    "imagenet caltech101 oxford_pets stanford_cars flowers102 food101 fgvc_aircraft sun397 dtd eurosat ucf101".split()
)


class ArrayStore:
    """The image store's interface over random uint8 images in memory (a pool of 16, reused, to save RAM),
    each 500 x 375 like a typical dataset photo: below the store's size cap, so kept at its original size."""

    def __init__(self, count: int, n_classes: int, seed: int, height: int = 375, width: int = 500, pool: int = 16):
        rng = np.random.default_rng(seed)
        self.images = rng.integers(0, 256, (pool, height, width, 3), dtype=np.uint8)
        self.labels = np.arange(count) % n_classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.images[i % len(self.images)]

    def original_size(self, i: int) -> tuple[int, int]:
        return self.images.shape[1], self.images.shape[2]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class CachedFeatures:
    """Frozen image features of every (epoch, view), read from host memory as the train cache is."""

    def __init__(self, epochs: int, count: int, dim: int, seed: int):
        rng = np.random.default_rng(seed)
        rows = rng.standard_normal((epochs, count, dim)).astype(np.float32)
        self.rows = rows / np.linalg.norm(rows, axis=-1, keepdims=True)

    def __call__(self, epoch: int, indices) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.rows[epoch, np.asarray(indices.cpu())]))


def image_size(clip) -> int:
    size = clip.visual.image_size
    return size[0] if isinstance(size, (tuple, list)) else int(size)


def make_specs(clip, tokenizer, n_runs: int, n_classes: int, epochs: int, precision: str, device: str):
    method = get_method("prompt_ot")
    side = image_size(clip)
    classnames = imagenet_classnames()[:n_classes]
    dim = (
        clip.text_projection.shape[1]
        if not isinstance(clip.text_projection, torch.nn.Linear)
        else clip.text_projection.out_features
    )
    specs = []
    for seed in range(1, n_runs + 1):
        count = SHOTS * n_classes
        store = ArrayStore(count, n_classes, seed)
        config = TrainConfig(epochs=epochs, precision=precision, device=device, seed=seed)
        specs.append(
            RunSpec(
                method,
                build_model(method, clip, tokenizer, seed=seed),
                TrainViews(store, seed, side),
                classnames,
                config,
                frozen_image_features=CachedFeatures(epochs, count, dim, seed),
            )
        )
    return specs


def step_throughput(clip, tokenizer, n_runs: int, n_classes: int, steps: int, device: torch.device) -> dict:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()  # each row's own peak, not the largest so far
    specs = make_specs(clip, tokenizer, n_runs, n_classes, epochs=2, precision="bf16", device=str(device))
    runs = [_Run(spec, device) for spec in specs]
    for run in runs:
        run.spec.model.eval()
        run.begin_epoch(0, device)

    def step():
        _packed_step(runs, 0, device, "bf16", {}, True)

    for _ in range(5):
        step()
    synchronize(device)
    sync_free = "not checked (CPU)"
    if device.type == "cuda":
        torch.cuda.set_sync_debug_mode("error")  # a host synchronisation inside the step raises
        try:
            step()
            sync_free = True
        except RuntimeError as err:
            sync_free = f"no: {str(err).splitlines()[0][:120]}"
        finally:
            torch.cuda.set_sync_debug_mode("default")
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    seconds = (time.perf_counter() - started) / steps
    return {
        "runs": n_runs,
        "classes": n_classes,
        "step_s": seconds,
        "images_per_s": n_runs * BATCH / seconds,
        "sync_free": sync_free,
        "memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan"),
    }


def evaluate_throughput(model, n_images: int, n_classes: int, device: torch.device, batch: int = 256) -> float:
    """Seconds to evaluate ``n_images`` test images with prompted encoders (bf16 autocast)."""
    model.set_classnames(imagenet_classnames()[:n_classes])
    side = image_size(model.clip)
    images = torch.randint(0, 256, (batch, 3, side, side), dtype=torch.uint8)
    synchronize(device)
    started = time.perf_counter()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        text = model.class_text_features()
        done = 0
        while done < n_images:
            x = images.to(device, non_blocking=True).float().div_(255)
            (model.image_features(x) @ text.t()).argmax(-1)
            done += batch
    synchronize(device)
    return time.perf_counter() - started


def full_run(
    clip, tokenizer, n_runs: int, epochs: int, device: torch.device, n_classes: int = 50, n_test: int = 2500
) -> dict:
    specs = make_specs(clip, tokenizer, n_runs, n_classes, epochs=epochs, precision="bf16", device=str(device))
    synchronize(device)
    started = time.perf_counter()
    results = train_packed(specs)
    synchronize(device)
    train_s = time.perf_counter() - started
    eval_s = sum(evaluate_throughput(spec.model, n_test, 2 * n_classes, device) for spec in specs)
    return {
        "runs": n_runs,
        "epochs": epochs,
        "train_s": train_s,
        "eval_s": eval_s,
        "total_s": train_s + eval_s,
        "steps_per_run": epochs * (SHOTS * n_classes // BATCH),
        "final_loss": [r.history[-1]["loss"] for r in results],
    }


def projection(steps: list[dict], eval_per_image_s: float, epochs: int, pack: int) -> dict:
    """The 33-run base-to-novel table priced at measured step and evaluation times (an estimate)."""
    timed = {row["classes"]: row["step_s"] for row in steps if row["runs"] == pack}
    (c0, t0), (c1, t1) = sorted(timed.items())[0], sorted(timed.items())[-1]
    slope = (t1 - t0) / (c1 - c0) if c1 != c0 else 0.0
    rows, total = [], 0.0
    for name in B2N_DATASETS:
        extra = dataset_spec(name).extra
        base = math.ceil(extra["num_classes"] / 2)
        steps_per_epoch = SHOTS * base // BATCH
        step_s = max(t0 + slope * (base - c0), 1e-9)
        train_s = epochs * steps_per_epoch * step_s * math.ceil(3 / pack)  # 3 seeds, `pack` of them per process
        eval_s = 3 * extra["split_sizes"][2] * eval_per_image_s
        rows.append(
            {
                "dataset": name,
                "base_classes": base,
                "steps": epochs * steps_per_epoch,
                "train_s": train_s,
                "eval_s": eval_s,
            }
        )
        total += train_s + eval_s
    return {"pack": pack, "rows": rows, "total_s": total}


def report(steps_part: dict | None, complete_part: dict | None) -> str:
    parts = [part for part in (steps_part, complete_part) if part is not None]
    lines = [
        "# GPU: training-step throughput and one complete base-to-novel run",
        "",
        f"ViT-B/16 (random weights), Prompt-OT (IVLP 4+4 x 12, joint exact OT on the device), batch {BATCH} per "
        "run, bf16 autocast, fused SGD, views augmented on the GPU from uint8 images, frozen image features "
        "from host memory (as the train cache serves them).",
        "",
    ]
    for part in parts:
        lines += [f"Part `{part['part']}`: `{part['command']}`", "", *machine_lines(part["machine"]), ""]
    if steps_part is None:
        lines += ["## Training step", "", "Not measured yet: run `bash bench/gpu.sh steps`.", ""]
    else:
        lines += [
            "## Training step",
            "",
            "| packed runs | classes | step | training images/s | no host sync in the step | peak memory |",
            "|---|---|---|---|---|---|",
        ]
        for row in steps_part["steps"]:
            lines.append(
                f"| {row['runs']} | {row['classes']} | {1000 * row['step_s']:.1f} ms | "
                f"{row['images_per_s']:.0f} | {'yes' if row['sync_free'] is True else row['sync_free']} | "
                f"{row['memory_gib']:.1f} GiB |"
            )
        lines += [
            "",
            f"Evaluation (prompted encoders, bf16, batch 256): {1e3 * steps_part['eval_per_image_s']:.3f} ms "
            "per test image.",
            "",
        ]
    lines += ["## One complete base-to-novel run (50 base classes, 16 shots, 2,500 test images)", ""]
    if complete_part is None:
        lines += ["Not measured yet: run `bash bench/gpu.sh complete`.", ""]
    else:
        lines += [
            "| runs | epochs | steps per run | training | evaluation | total | per run |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in complete_part["full"]:
            lines.append(
                f"| {row['runs']} {'packed' if row['runs'] > 1 else 'alone'} | {row['epochs']} | "
                f"{row['steps_per_run']} | {row['train_s']:.0f} s | {row['eval_s']:.0f} s | "
                f"{row['total_s']:.0f} s | {row['total_s'] / row['runs']:.0f} s |"
            )
        lines.append("")
    for proj in (steps_part or {}).get("projections", []):
        label = "3 seeds packed per process" if proj["pack"] == 3 else "one run per process"
        lines += [
            f"## Projection: the 33-run base-to-novel table, {label} (estimate from the measured times above)",
            "",
            "| dataset | base classes | steps per run | training (3 seeds) | evaluation (3 seeds) |",
            "|---|---|---|---|---|",
        ]
        for row in proj["rows"]:
            lines.append(
                f"| {row['dataset']} | {row['base_classes']} | {row['steps']} | {row['train_s'] / 60:.1f} min | "
                f"{row['eval_s'] / 60:.1f} min |"
            )
        lines += [f"| **all 33 runs** | | | | **{proj['total_s'] / 3600:.2f} GPU-hours** |", ""]
    lines += ["Goal: the 33-run table within 1 GPU-hour on one H200-class GPU.", ""]
    return "\n".join(lines)


def part_file(out: Path, part: str) -> Path:
    return out.with_name(f"{out.stem}.{part}.json")


def measure_steps(clip, tokenizer, args, device: torch.device) -> dict:
    steps = []
    for n_classes in args.classes:
        for n_runs in (1, 3, 8):
            row = step_throughput(clip, tokenizer, n_runs, n_classes, args.steps, device)
            steps.append(row)
            print(
                f"step: {n_runs} run(s), {n_classes} classes: {1000 * row['step_s']:.1f} ms, "
                f"{row['images_per_s']:.0f} images/s, sync-free {row['sync_free']}",
                flush=True,
            )
    model = build_model(get_method("prompt_ot"), clip, tokenizer, seed=1)
    eval_per_image = evaluate_throughput(model, 5000, 100, device) / 5000
    print(f"evaluation: {1e3 * eval_per_image:.3f} ms per test image", flush=True)
    return {
        "steps": steps,
        "eval_per_image_s": eval_per_image,
        "projections": [projection(steps, eval_per_image, 40, pack) for pack in (1, 3)],
    }


def measure_complete(clip, tokenizer, args, device: torch.device) -> dict:
    full = []
    for n_runs in (1, 3):
        row = full_run(clip, tokenizer, n_runs, args.epochs, device)
        full.append(row)
        print(
            f"complete run: {n_runs} run(s), {args.epochs} epochs: train {row['train_s']:.0f} s, "
            f"eval {row['eval_s']:.0f} s",
            flush=True,
        )
    return {"full": full}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--part",
        choices=["all", "steps", "complete"],
        default="all",
        help="steps: throughput, evaluation and projection; complete: the complete runs",
    )
    parser.add_argument("--epochs", type=int, default=40, help="epochs of the complete run (params.yaml: 40)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per throughput row")
    parser.add_argument("--quick", action="store_true", help="2 epochs for the complete run, 10 timed steps")
    parser.add_argument("--out", default=str(ROOT / "reports" / "perf" / "gpu.md"))
    parser.add_argument("--device", default="cuda", help="cuda; cpu only to check the script itself")
    parser.add_argument("--backbone", default=BACKBONE, help="another open_clip ViT only to check the script")
    parser.add_argument("--classes", type=int, nargs=2, default=[50, 500], help="the two class counts timed")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():  # `make bench` on a machine without a GPU
        print(
            "bench_gpu.py: skipped, no CUDA GPU here (bench/gpu.sh runs it where there is one; "
            "--device cpu checks the script itself)"
        )
        return 0
    if args.quick:
        args.epochs, args.steps = 2, 10
    torch.backends.cuda.matmul.allow_tf32 = True
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python bench/bench_gpu.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    clip, tokenizer, _ = load_backbone(args.backbone, "none", device=str(device))
    measures = {"steps": measure_steps, "complete": measure_complete}
    for part in ["steps", "complete"] if args.part == "all" else [args.part]:
        machine = machine_info()  # date and load average at the start of each part
        result = {
            "part": part,
            "command": command.strip(),
            "machine": machine,
            **measures[part](clip, tokenizer, args, device),
        }
        part_file(out, part).write_text(json.dumps(result, indent=1, default=str) + "\n")
    found = {
        part: json.loads(part_file(out, part).read_text()) if part_file(out, part).exists() else None
        for part in ("steps", "complete")
    }
    text = report(found["steps"], found["complete"])
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
