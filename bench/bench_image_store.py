"""Benchmark: an epoch of training views from the image store vs decoding the JPEG files every epoch.

Generates a few hundred photo-like 500x375 JPEGs, builds a training store from them, then times, in
the same run and with the same DataLoader settings, (a) ``TrainViews`` over the store (seeded random
resized crop + flip from the stored 256 px images) and (b) a dataset that opens and decodes each JPEG
and applies torchvision's RandomResizedCrop + flip pipeline. Writes reports/perf/image_store.md.

    python bench/bench_image_store.py [--images 300] [--workers 0 2] [--epochs 5]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL
import torch
import torchvision
from PIL import Image
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_model, pot_version  # noqa: E402
from prompt_ot.data.augment import CLIP_MEAN, CLIP_STD, TrainViews  # noqa: E402
from prompt_ot.data.registry import Item  # noqa: E402
from prompt_ot.data.store import build_store  # noqa: E402

IMAGE_SIZE = 224


def photo_like(seed: int, width: int = 500, height: int = 375) -> Image.Image:
    """Smooth random colour fields plus noise: JPEG sizes and decode costs close to real photos."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    noisy = np.asarray(coarse, dtype=np.int16) + rng.integers(-20, 21, (height, width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


class JpegFiles(torch.utils.data.Dataset):
    """The baseline: open, decode and augment the JPEG file on every access."""

    def __init__(self, paths: list[Path], labels: list[int]):
        self.paths, self.labels = paths, labels
        self.transform = transforms.Compose([
            transforms.RandomResizedCrop(
                IMAGE_SIZE, scale=(0.08, 1.0), interpolation=transforms.InterpolationMode.BICUBIC
            ),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(CLIP_MEAN, CLIP_STD),
        ])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        with Image.open(self.paths[i]) as image:
            return self.transform(image.convert("RGB")), self.labels[i]


def time_epoch(dataset, workers: int, epoch: int, batch_size: int) -> float:
    """Seconds to iterate one shuffled epoch of ``dataset`` (DataLoader start-up included, as in training)."""
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True,
        generator=torch.Generator().manual_seed(epoch),
    )
    start = time.perf_counter()
    for images, _ in loader:
        assert images.shape[1:] == (3, IMAGE_SIZE, IMAGE_SIZE)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default="reports/perf/image_store.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # one thread per loader process, as in the usual data-loading setup
    load_at_start = os.getloadavg()  # other work on the machine slows both pipelines alike
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    print(f"{started}: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, load {load_at_start[0]:.2f}",
          flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        items = []
        for k in range(args.images):
            relpath = f"class{k % 10}/img_{k:04d}.jpg"
            (root / relpath).parent.mkdir(parents=True, exist_ok=True)
            photo_like(k).save(root / relpath, quality=90)
            items.append(Item(relpath, k % 10, f"class{k % 10}"))
        jpeg_bytes = sum((root / it.relpath).stat().st_size for it in items)

        start = time.perf_counter()
        store = build_store(items, root, Path(tmp) / "store", "train", IMAGE_SIZE)
        build_seconds = time.perf_counter() - start
        store_bytes = sum(p.stat().st_size for p in (Path(tmp) / "store").iterdir())

        per_epoch = args.images // args.batch_size * args.batch_size  # the last incomplete batch is dropped
        rows = []
        for workers in args.workers:
            views = TrainViews(store, seed=1, image_size=IMAGE_SIZE)
            jpegs = JpegFiles([root / it.relpath for it in items], [it.label for it in items])
            # alternate the two epoch by epoch so changing machine load hits both alike; epoch 0 is a warm-up
            store_s, jpeg_s = [], []
            for epoch in range(args.epochs):
                store_s.append(time_epoch(views, workers, epoch, args.batch_size))
                jpeg_s.append(time_epoch(jpegs, workers, epoch, args.batch_size))
            store_median, jpeg_median = float(np.median(store_s[1:] or store_s)), float(np.median(jpeg_s[1:] or jpeg_s))
            rows.append({
                "workers": workers,
                "store_epoch_s": round(store_median, 3),
                "jpeg_epoch_s": round(jpeg_median, 3),
                "store_images_per_s": round(per_epoch / store_median, 1),
                "jpeg_images_per_s": round(per_epoch / jpeg_median, 1),
                "speedup": round(jpeg_median / store_median, 2),
                "store_all_epochs_s": [round(s, 3) for s in store_s],
                "jpeg_all_epochs_s": [round(s, 3) for s in jpeg_s],
            })
            print(f"workers={workers}: store {store_median:.2f} s/epoch, JPEG {jpeg_median:.2f} s/epoch, "
                  f"ratio {jpeg_median / store_median:.2f}x")

    result = {
        "command": f"python bench/bench_image_store.py {shlex.join(sys.argv[1:] if argv is None else argv)}".strip(),
        "images": args.images, "image_size": IMAGE_SIZE, "stored_size": store.stored_size,
        "source": "generated 500x375 JPEGs (quality 90)", "batch_size": args.batch_size, "epochs": args.epochs,
        "jpeg_mib": round(jpeg_bytes / 2**20, 1), "store_mib": round(store_bytes / 2**20, 1),
        "store_build_s": round(build_seconds, 2), "rows": rows,
        "machine": {
            "date": started, "platform": platform.platform(), "cpu": cpu_model(),
            "cpus": os.cpu_count(), "load_average_at_start": [round(x, 2) for x in load_at_start],
            "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "pillow": PIL.__version__, "pot": pot_version(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
    }
    table = "\n".join(
        f"| {r['workers']} | {r['store_epoch_s']} | {r['jpeg_epoch_s']} | {r['store_images_per_s']} | "
        f"{r['jpeg_images_per_s']} | {r['speedup']}x |" for r in rows
    )
    machine = result["machine"]
    report = f"""# Image store vs decoding JPEGs every epoch

Command: `{result['command']}`

{args.images} generated 500x375 JPEGs ({result['jpeg_mib']} MiB), training views of {IMAGE_SIZE} px, batch
{args.batch_size}, shuffled DataLoader, median of epochs 2..{args.epochs} (epoch 1 is a warm-up;
the two pipelines alternate epoch by epoch). Store:
{result['store_mib']} MiB of {store.stored_size} px uint8 shards, built once in {result['store_build_s']} s
(decode + resize; amortised over all epochs, seeds and methods). With workers, every epoch starts
new worker processes and each batch crosses a process boundary; both pipelines pay that alike.

| DataLoader workers | store s/epoch | JPEG s/epoch | store images/s | JPEG images/s | speedup |
|---:|---:|---:|---:|---:|---:|
{table}

Date: {machine['date']}. Machine: {machine['cpu']}, {machine['cpus']} cores ({machine['platform']}),
Python {machine['python']}, torch {machine['torch']}, torchvision {machine['torchvision']}, Pillow
{machine['pillow']}, POT {machine['pot']}, GPU: {machine['gpu'] or 'none (CPU run)'}. Load average
{machine['load_average_at_start'][0]} at start: a 2-core machine shared with other agents' test runs, so
the absolute figures carry that contention; the two pipelines alternate epoch by epoch within one run,
so their ratio is less affected.

```json
{json.dumps(result, indent=1)}
```
"""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
