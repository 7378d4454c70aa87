"""Benchmark: an epoch of training views from the image store, previous vs current layout, vs decoding JPEGs.

Generates photo-like JPEGs at two sizes: 500x375 (a typical dataset photo, below the store's size cap, so
stored exactly as decoded) and 1600x1200 (above the cap, so stored at shorter side 915 for 224 px inputs).
For each set it builds, in the same run, the three pipelines and times them with the same DataLoader
settings, epoch by epoch in turn:
- "before", the PREVIOUS store layout, emulated here: every image resized to shorter side 256 and
  centre-cropped to 256x256, the random resized crop drawn on that square;
- "after", the current store (``build_store(..., "train", 224)``: the whole image, aspect kept, shorter side
  capped automatically) read by ``TrainViews``, the crop box drawn on the original image size;
- "JPEG": open and decode each file every epoch and apply torchvision's RandomResizedCrop + flip.
Writes reports/perf/image_store.md.

    python bench/bench_image_store.py [--images 300] [--large-images 96] [--workers 0 2] [--epochs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine_info  # noqa: E402

from prompt_ot.data.augment import CLIP_MEAN, CLIP_STD, TrainViews, train_view  # noqa: E402
from prompt_ot.data.registry import Item  # noqa: E402
from prompt_ot.data.store import build_store, default_train_short_side, resize_center_crop  # noqa: E402

IMAGE_SIZE = 224
PREVIOUS_SIDE = 256  # the previous layout's square: 8/7 of the input size


def photo_like(seed: int, width: int = 500, height: int = 375) -> Image.Image:
    """Smooth random colour fields plus noise: JPEG sizes and decode costs close to real photos."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    noisy = np.asarray(coarse, dtype=np.int16) + rng.integers(-20, 21, (height, width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


class JpegFiles(torch.utils.data.Dataset):
    """The baseline: open, decode and augment the JPEG file on every access (the reference's pipeline)."""

    def __init__(self, paths: list[Path], labels: list[int]):
        self.paths, self.labels = paths, labels
        self.transform = transforms.Compose(
            [
                transforms.RandomResizedCrop(
                    IMAGE_SIZE, scale=(0.08, 1.0), interpolation=transforms.InterpolationMode.BICUBIC
                ),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize(CLIP_MEAN, CLIP_STD),
            ]
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        with Image.open(self.paths[i]) as image:
            return self.transform(image.convert("RGB")), self.labels[i]


def _previous_pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return resize_center_crop(image, PREVIOUS_SIDE)


def build_previous_layout(paths: list[Path], out: Path) -> None:
    """THE PREVIOUS LAYOUT, emulated: each image at shorter side 256, centre-cropped to 256x256, in one
    memory-mapped uint8 array (the old store's shards, in one piece), decoded by as many threads as the
    store's build uses."""
    shape = (len(paths), PREVIOUS_SIDE, PREVIOUS_SIDE, 3)
    array = np.lib.format.open_memmap(out, mode="w+", dtype=np.uint8, shape=shape)
    with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
        for k, pixels in enumerate(pool.map(_previous_pixels, paths)):
            array[k] = pixels
    array.flush()
    del array


class PreviousLayoutViews(torch.utils.data.Dataset):
    """Views of the previous layout: the same keyed crop + flip, its box drawn on the 256 px square."""

    def __init__(self, path: Path, labels: list[int], seed: int):
        self.path, self.labels, self.seed, self.epoch = path, labels, seed, 0
        self.images = np.load(path, mmap_mode="r")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return train_view(self.images[i], self.seed, self.epoch, i, IMAGE_SIZE), self.labels[i]

    def __getstate__(self):  # workers reopen the memory map
        return {**self.__dict__, "images": None}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.images = np.load(self.path, mmap_mode="r")


def time_epoch(dataset, workers: int, epoch: int, batch_size: int) -> float:
    """Seconds to iterate one shuffled epoch of ``dataset`` (DataLoader start-up included, as in training)."""
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        generator=torch.Generator().manual_seed(epoch),
    )
    start = time.perf_counter()
    for images, _ in loader:
        assert images.shape[1:] == (3, IMAGE_SIZE, IMAGE_SIZE)
    return time.perf_counter() - start


def folder_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def measure_set(tmp: Path, name: str, count: int, width: int, height: int, args) -> dict:
    """Generate ``count`` JPEGs of width x height, build both layouts, time the three pipelines."""
    root = tmp / name / "images"
    items = []
    for k in range(count):
        relpath = f"class{k % 10}/img_{k:04d}.jpg"
        (root / relpath).parent.mkdir(parents=True, exist_ok=True)
        photo_like(k, width, height).save(root / relpath, quality=90)
        items.append(Item(relpath, k % 10, f"class{k % 10}"))
    paths, labels = [root / it.relpath for it in items], [it.label for it in items]

    start = time.perf_counter()
    build_previous_layout(paths, tmp / name / "previous.npy")
    before_build_s = time.perf_counter() - start
    start = time.perf_counter()
    store = build_store(items, root, tmp / name / "store", "train", IMAGE_SIZE)
    after_build_s = time.perf_counter() - start

    per_epoch = count // args.batch_size * args.batch_size  # the last incomplete batch is dropped
    pipelines = {
        "before": PreviousLayoutViews(tmp / name / "previous.npy", labels, seed=1),
        "after": TrainViews(store, seed=1, image_size=IMAGE_SIZE),
        "jpeg": JpegFiles(paths, labels),
    }
    rows = []
    for workers in args.workers:
        # the three alternate epoch by epoch so changing machine load hits them alike; epoch 0 is a warm-up
        seconds = {key: [] for key in pipelines}
        for epoch in range(args.epochs):
            for key, dataset in pipelines.items():
                seconds[key].append(time_epoch(dataset, workers, epoch, args.batch_size))
        median = {key: float(np.median(s[1:] or s)) for key, s in seconds.items()}
        rows.append(
            {
                "workers": workers,
                **{f"{key}_epoch_s": round(median[key], 3) for key in pipelines},
                **{f"{key}_images_per_s": round(per_epoch / median[key], 1) for key in pipelines},
                "speedup_before": round(median["jpeg"] / median["before"], 2),
                "speedup_after": round(median["jpeg"] / median["after"], 2),
                "after_over_before": round(median["after"] / median["before"], 2),
                **{f"{key}_all_epochs_s": [round(x, 3) for x in s] for key, s in seconds.items()},
            }
        )
        print(
            f"{name} workers={workers}: before {median['before']:.2f} s/epoch, after {median['after']:.2f}, "
            f"JPEG {median['jpeg']:.2f}; JPEG/after {median['jpeg'] / median['after']:.2f}x",
            flush=True,
        )
    stored = store.stored_sizes
    return {
        "name": name,
        "images": count,
        "width": width,
        "height": height,
        "per_epoch": per_epoch,
        "jpeg_mib": round(sum(p.stat().st_size for p in paths) / 2**20, 1),
        "before_mib": round((tmp / name / "previous.npy").stat().st_size / 2**20, 1),
        "after_mib": round(folder_mib(tmp / name / "store"), 1),
        "before_build_s": round(before_build_s, 2),
        "after_build_s": round(after_build_s, 2),
        "after_stored_size": [int(stored[:, 1].max()), int(stored[:, 0].max())],  # width x height
        "rows": rows,
    }


def report_text(result: dict) -> str:
    sets, machine = result["sets"], result["machine"]
    placement = ";\n".join(
        f"{s['width']}x{s['height']} is below the cap, so those images are stored exactly as decoded"
        if s["after_stored_size"] == [s["width"], s["height"]]
        else f"{s['width']}x{s['height']} is above the cap, so they are stored at "
        f"{s['after_stored_size'][0]}x{s['after_stored_size'][1]}"
        for s in sets
    )
    sizes = "\n".join(
        f"| {s['width']}x{s['height']} | {s['images']} | {s['jpeg_mib']} | {s['before_mib']} "
        f"({s['before_build_s']} s) | {s['after_mib']} ({s['after_build_s']} s) | "
        f"{s['after_stored_size'][0]}x{s['after_stored_size'][1]} |"
        for s in sets
    )
    speed = "\n".join(
        f"| {s['width']}x{s['height']} | {r['workers']} | {r['before_epoch_s']} | {r['after_epoch_s']} | "
        f"{r['jpeg_epoch_s']} | {r['before_images_per_s']} / {r['after_images_per_s']} / {r['jpeg_images_per_s']} | "
        f"{r['speedup_before']}x | {r['speedup_after']}x | {r['after_over_before']}x |"
        for s in sets
        for r in s["rows"]
    )
    return f"""# Image store (previous and current layout) vs decoding JPEGs every epoch

Command: `{result["command"]}`

Generated photo-like JPEGs (quality 90) at two sizes, training views of {IMAGE_SIZE} px, batch
{result["batch_size"]}, shuffled DataLoader, median of epochs 2..{result["epochs"]} (epoch 1 is a warm-up; the three
pipelines alternate epoch by epoch in one run):

- **before**: the previous store layout, emulated in the script: every image resized to shorter side
  {PREVIOUS_SIDE} and centre-cropped to {PREVIOUS_SIDE}x{PREVIOUS_SIDE}, the random resized crop drawn on that square
  (a narrower field of view than the reference's for any non-square image);
- **after**: the current store: the whole image, aspect ratio kept, shorter side capped at
  {result["cap"]} px (automatic for {IMAGE_SIZE} px inputs: the smallest cap at which every crop is still a
  downscale), the crop box drawn on the original image size, so the boxes are torchvision's
  RandomResizedCrop boxes on the original file;
- **JPEG**: decode the file every epoch, torchvision RandomResizedCrop + flip (the reference's pipeline).

{placement}.
An image stored as decoded gives views bitwise equal to torchvision's resized crop of the decoded file
(`tests/test_augment.py`). The store costs 3 bytes per stored pixel, against 3 x 256 x 256
per image before. Builds happen once (decode + resize, the same number of threads for both layouts;
amortised over all epochs, seeds and methods). With workers, every epoch starts new worker processes
and each batch crosses a process boundary; all pipelines pay that alike.

| images | count | JPEG MiB | before MiB (build) | after MiB (build) | after stored as |
|---|---:|---:|---:|---:|---|
{sizes}

| images | DataLoader workers | before s/epoch | after s/epoch | JPEG s/epoch | images/s before / after / JPEG | JPEG ÷ before | JPEG ÷ after | after ÷ before |
|---|---:|---:|---:|---:|---|---:|---:|---:|
{speed}

Date: {machine["date"]}. Machine: {machine["cpu"]}, {machine["cores"]} cores ({machine["platform"]}),
Python {machine["python"]}, torch {machine["torch"]}, torchvision {machine["torchvision"]}, Pillow
{machine["pillow"]}, POT {machine["pot"]}, GPU: {machine["gpu"] or "none (CPU run)"}. Load average
{machine["load_average_at_start"][0]} at start: a 2-core machine shared with other work, so the absolute
figures carry that contention; the pipelines alternate epoch by epoch within one run, so their ratios are
less affected.

```json
{json.dumps(result, indent=1)}
```
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300, help="500x375 images (below the size cap)")
    parser.add_argument("--large-images", type=int, default=96, help="1600x1200 images (above the cap); 0: none")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default="reports/perf/image_store.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # one thread per loader process, as in the usual data-loading setup
    machine = machine_info(("torchvision", "pillow"))  # other work on the machine slows all pipelines alike
    print(
        f"{machine['date']}: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, "
        f"load {machine['load_average_at_start'][0]:.2f}",
        flush=True,
    )
    wall = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        sets = [measure_set(Path(tmp), "photos_500x375", args.images, 500, 375, args)]
        if args.large_images:
            sets.append(measure_set(Path(tmp), "photos_1600x1200", args.large_images, 1600, 1200, args))
    result = {
        "command": f"python bench/bench_image_store.py {shlex.join(sys.argv[1:] if argv is None else argv)}".strip(),
        "image_size": IMAGE_SIZE,
        "previous_side": PREVIOUS_SIDE,
        "cap": default_train_short_side(IMAGE_SIZE),
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "sets": sets,
        "wall_s": round(time.perf_counter() - wall, 1),
        "machine": machine,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report_text(result))
    print(f"wrote {out} ({result['wall_s']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
