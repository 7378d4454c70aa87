"""Train a method's prompts on a labelled image dataset: the engine, free of any pipeline or tracker.

``train(method, model, dataset, classnames, config)`` runs the paper's recipe (SGD 0.005, momentum 0.9,
weight decay 5e-4, one constant warm-up epoch at 1e-4, then cosine over the remaining schedule, batch 4
dropping the last partial batch) and returns the trained prompts and per-epoch metrics. The batch order
depends only on (seed, epoch) and a dataset with ``set_epoch`` gets the epoch before its batches are
drawn, so a run killed after epoch k resumes from its checkpoint to exactly the uninterrupted weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from prompt_ot.errors import UserError, unknown_name
from prompt_ot.methods import MethodConfig

PRECISIONS = ("fp32", "bf16", "fp16")
CHECKPOINT_NAME = "checkpoint.safetensors"
FrozenImageFeatures = Callable[[int, torch.Tensor], torch.Tensor]  # (epoch, dataset indices) -> (B, D)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 40
    batch_size: int = 4
    lr: float = 0.005
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    warmup_lr: float = 1e-4
    precision: str = "fp32"
    device: str = "auto"
    seed: int = 1
    num_workers: int = 0

    def validate(self) -> None:
        for key in ("epochs", "batch_size"):
            if getattr(self, key) < 1:
                raise UserError(f"train.{key}={getattr(self, key)} must be a positive integer")
        for key in ("lr", "warmup_lr"):
            if not getattr(self, key) > 0:
                raise UserError(f"train.{key}={getattr(self, key)} must be > 0")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise UserError(f"train.warmup_epochs={self.warmup_epochs} must be in [0, epochs={self.epochs})")
        if self.precision not in PRECISIONS:
            raise unknown_name("precision", self.precision, PRECISIONS)


@dataclass
class TrainResult:
    prompts: dict[str, torch.Tensor]
    history: list[dict] = field(default_factory=list)
    resumed_from_epoch: int = 0


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device!r} was asked for but no CUDA device is available; use 'cpu' or 'auto'")
    return torch.device(device)


def learning_rate(config: TrainConfig, epoch: int) -> float:
    """Constant warm-up, then cosine annealing from ``lr`` towards 0 over all epochs (Dassl's schedule)."""
    if epoch < config.warmup_epochs:
        return config.warmup_lr
    return 0.5 * config.lr * (1.0 + math.cos(math.pi * epoch / config.epochs))


def epoch_batches(n_items: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The shuffled full batches of one epoch; depends only on (seed, epoch)."""
    generator = torch.Generator().manual_seed(int(hashlib.sha256(f"{seed}:{epoch}".encode()).hexdigest()[:15], 16))
    order = torch.randperm(n_items, generator=generator).tolist()
    n_batches = n_items // batch_size
    return [order[b * batch_size : (b + 1) * batch_size] for b in range(n_batches)]


def run_fingerprint(method: MethodConfig, config: TrainConfig, classnames: list[str], backbone: str) -> str:
    """Identifies what a checkpoint belongs to; resuming from another method or backbone is refused."""
    payload = json.dumps(
        {"method": method.to_dict(), "train": asdict(config) | {"device": None, "num_workers": None},
         "classes": classnames, "backbone": backbone},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _index_dataset(dataset):
    """Wrap a map-style dataset so that batches carry their item indices."""

    class Indexed(torch.utils.data.Dataset):
        def __len__(self):
            return len(dataset)

        def __getitem__(self, i):
            image, label = dataset[i][:2]
            return image, label, i

    return Indexed()


def train(
    method: MethodConfig,
    model,
    dataset,
    classnames: list[str],
    config: TrainConfig = TrainConfig(),
    checkpoint_dir: str | Path | None = None,
    frozen_image_features: FrozenImageFeatures | None = None,
    backbone: str = "",
    on_epoch_end: Callable[[dict], None] | None = None,
    stop_after_epoch: int | None = None,
) -> TrainResult:
    """Train ``model``'s prompts (a ``PromptedCLIP``) with ``method`` and return prompts and per-epoch metrics.

    ``frozen_image_features(epoch, indices)`` may supply the regulariser's frozen image features of the
    exact training views (the feature cache); then no frozen image forward runs during training.
    ``stop_after_epoch`` ends the run early (as a kill would), for tests of resumption.
    """
    from prompt_ot.losses import RegulariserInputs, build_regulariser

    config.validate()
    device = resolve_device(config.device)
    model.to(device)
    model.set_classnames(classnames)
    regulariser = build_regulariser(method.regulariser)
    if regulariser is not None:
        regulariser.to(device)
    params = model.trainable_parameters()
    if not method.trains or not params:
        return TrainResult(prompts=model.prompt_state())
    if len(dataset) < config.batch_size:
        raise UserError(f"the training set has {len(dataset)} images, fewer than one batch of {config.batch_size}")

    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
    fingerprint = run_fingerprint(method, config, classnames, backbone)
    history: list[dict] = []
    start_epoch = 0
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir else None
    if ckpt_path is not None and ckpt_path.exists():
        from prompt_ot.checkpoint import load_checkpoint

        start_epoch, history = load_checkpoint(ckpt_path, model, optimizer, scaler, fingerprint)

    with torch.no_grad(), _autocast(device, config.precision):
        frozen_class_text = model.frozen_class_text_features().float()
        # Without text prompts, class text features do not change: encode them once.
        fixed_class_text = None if model.config.text_depth > 0 else model.class_text_features().float()
    needs_frozen_image = regulariser is not None and regulariser.needs_frozen_image
    indexed = _index_dataset(dataset)

    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        lr = learning_rate(config, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(
            indexed,
            batch_sampler=epoch_batches(len(dataset), config.batch_size, config.seed, epoch),
            num_workers=config.num_workers,
        )
        sums = {"loss": 0.0, "ce": 0.0, "reg": 0.0, "correct": 0, "seen": 0}
        model.eval()  # the backbone stays in inference mode; only the prompts learn
        for images, labels, indices in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with _autocast(device, config.precision):
                class_text = fixed_class_text if fixed_class_text is not None else model.class_text_features()
                image = model.image_features(images)
                logits = (model.logit_scale * image @ class_text.t()).float()
                ce = F.cross_entropy(logits, labels)
                reg = torch.zeros((), device=device)
                if regulariser is not None:
                    frozen_image = None
                    if needs_frozen_image:
                        if frozen_image_features is not None:
                            frozen_image = frozen_image_features(epoch, indices).to(device)
                        else:
                            frozen_image = model.frozen_image_features(images)
                    reg = regulariser(RegulariserInputs(
                        image=image.float(),
                        frozen_image=None if frozen_image is None else frozen_image.float(),
                        class_text=class_text.float(),
                        frozen_class_text=frozen_class_text,
                        labels=labels,
                    ))
                loss = ce + reg
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            n = labels.shape[0]
            sums["loss"] += loss.item() * n
            sums["ce"] += ce.item() * n
            sums["reg"] += float(reg.detach()) * n
            sums["correct"] += int((logits.argmax(-1) == labels).sum())
            sums["seen"] += n
        seen = max(sums["seen"], 1)
        record = {
            "epoch": epoch + 1,
            "lr": lr,
            "loss": sums["loss"] / seen,
            "ce": sums["ce"] / seen,
            "regulariser": sums["reg"] / seen,
            "train_accuracy": sums["correct"] / seen,
            "seconds": time.perf_counter() - started,
        }
        if not math.isfinite(record["loss"]):
            raise FloatingPointError(f"loss became {record['loss']} in epoch {epoch + 1}; lower the lr or use fp32")
        history.append(record)
        if ckpt_path is not None:
            from prompt_ot.checkpoint import save_checkpoint

            save_checkpoint(ckpt_path, model, optimizer, scaler, epoch + 1, history, fingerprint)
        if on_epoch_end is not None:
            on_epoch_end(record)
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            break
    return TrainResult(prompts=model.prompt_state(), history=history, resumed_from_epoch=start_epoch)
