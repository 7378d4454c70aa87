"""CPU smoke run of the engine: train one method on scikit-learn's real handwritten digits with a tiny
randomly initialised CLIP, then report base and novel accuracy. It checks the install end to end in
about a minute; the numbers mean little because the backbone was never pretrained."""

from __future__ import annotations

import json
import time
from pathlib import Path

from prompt_ot.utils import args as check

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def add_arguments(parser) -> None:
    parser.add_argument("--method", default="prompt_ot", type=check.non_empty, help="method name (default: prompt_ot)")
    parser.add_argument("--epochs", type=check.positive_int, default=3)
    parser.add_argument("--shots", type=check.positive_int, default=16)
    parser.add_argument("--seed", type=check.non_negative_int, default=1)
    parser.add_argument("--backbone", default="tiny-vit", type=check.non_empty)
    parser.add_argument(
        "--out", default="smoke_out", type=check.out_dir, help="folder for prompts.safetensors and metrics.json"
    )


def _digits_tensors(image_size: int):
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=image_size, mode="bicubic", align_corners=False).clamp(0, 1)
    return images.expand(-1, 3, -1, -1).contiguous(), torch.tensor(digits.target)


def run(args) -> int:
    import torch

    from prompt_ot.checkpoint import save_prompts
    from prompt_ot.evaluate import evaluate, harmonic_mean
    from prompt_ot.methods import build_model, get_method
    from prompt_ot.models.backbone import load_backbone
    from prompt_ot.train import TrainConfig, train
    from prompt_ot.utils.io import atomic_write_text

    started = time.perf_counter()
    method = get_method(args.method)
    clip, tokenizer, pre = load_backbone(args.backbone)
    images, labels = _digits_tensors(pre.image_size)
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    images = (images - mean) / std
    generator = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(labels), generator=generator)
    test_mask = torch.zeros(len(labels), dtype=torch.bool)
    test_mask[order[: len(labels) // 2]] = True
    base, novel = list(range(5)), list(range(5, 10))
    train_idx = [
        int(i) for c in base for i in order[~test_mask[order]][labels[order][~test_mask[order]] == c][: args.shots]
    ]

    def subset(indices, offset):
        return torch.utils.data.TensorDataset(images[indices], labels[indices] - offset)

    train_set = subset(torch.tensor(train_idx), 0)
    test_idx = torch.nonzero(test_mask).flatten()
    base_test = subset(test_idx[labels[test_idx] < 5], 0)
    novel_test = subset(test_idx[labels[test_idx] >= 5], 5)

    model = build_model(method, clip, tokenizer, seed=args.seed)
    config = TrainConfig(epochs=args.epochs, seed=args.seed, device="cpu")
    result = train(
        method,
        model,
        train_set,
        [DIGITS[c] for c in base],
        config,
        backbone=args.backbone,
        on_epoch_end=lambda r: print(
            f"epoch {r['epoch']}/{args.epochs}  loss {r['loss']:.4f}  "
            f"train acc {100 * r['train_accuracy']:.1f}%  {r['seconds']:.1f}s",
            flush=True,
        ),
    )
    base_acc = evaluate(model, base_test, [DIGITS[c] for c in base]).accuracy
    novel_acc = evaluate(model, novel_test, [DIGITS[c] for c in novel]).accuracy
    metrics = {
        "method": method.name,
        "backbone": args.backbone,
        "seed": args.seed,
        "epochs": args.epochs,
        "base": base_acc,
        "novel": novel_acc,
        "hm": harmonic_mean(base_acc, novel_acc),
        "history": result.history,
    }
    out = Path(args.out)
    save_prompts(out / "prompts.safetensors", result.prompts, {"method": method.name, "backbone": args.backbone})
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    print(
        f"{method.name}: base {base_acc:.2f}%  novel {novel_acc:.2f}%  HM {metrics['hm']:.2f}  "
        f"({time.perf_counter() - started:.0f}s; random-weight backbone, so near chance is expected)"
    )
    print(f"wrote {out / 'metrics.json'} and {out / 'prompts.safetensors'}")
    return 0
