"""Contrastive pretraining of a small CLIP on the demo datasets: the offline demo's stand-in for web-scale
pretraining, so that the frozen model knows the novel classes before prompt learning starts.

Images of each dataset's training split get captions made from several templates over their class names;
open_clip's ``ClipLoss`` trains every weight from a seeded random start. Text is encoded truncated at the
longest caption (exact for CLIP's causal text transformer), which makes the text tower cheap. The result
is a plain open_clip state dict that every later stage loads as ``backbone.pretrained``.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from prompt_ot.errors import UserError

DEFAULT_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.", "{}", "a photo of the {}.")


@dataclass(frozen=True)
class PretrainConfig:
    datasets: tuple[str, ...]
    epochs: int = 3
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50
    images_per_class: dict = field(default_factory=dict)  # dataset -> cap on training images per class
    repeat: dict = field(default_factory=dict)  # dataset -> how often its images appear per epoch
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    seed: int = 0
    threads: int = 0  # torch CPU threads (0 = torch's default)
    # each image seen as a random resized crop (the prompt learners' training views: the same scale and aspect
    # ranges, flipped half the time) instead of whole, so that the frozen model knows the parts of an image that
    # few-shot training shows it
    crops: bool = False

    @classmethod
    def from_params(cls, raw: dict) -> PretrainConfig:
        allowed = set(cls.__dataclass_fields__)
        unknown = set(raw) - allowed
        if unknown:
            raise UserError(f"unknown key(s) {sorted(unknown)} under pretrain; allowed: {sorted(allowed)}")
        values = dict(raw)
        values["datasets"] = tuple(values.get("datasets", ()))
        if "templates" in values:
            values["templates"] = tuple(values["templates"])
        config = cls(**values)
        if not config.datasets:
            raise UserError("pretrain.datasets is empty; name the datasets whose training images to pretrain on")
        for key in ("epochs", "batch_size"):
            if getattr(config, key) < 1:
                raise UserError(f"pretrain.{key} = {getattr(config, key)} must be a positive integer")
        if any(t.count("{}") != 1 for t in config.templates):
            raise UserError("every pretrain template must contain '{}' exactly once")
        return config

    def fingerprint(self, backbone: str) -> str:
        payload = json.dumps({"backbone": backbone, **asdict(self)}, sort_keys=True, default=list)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _balanced(items, per_class: int | None, seed: int):
    if not per_class:
        return list(items)
    from prompt_ot.data.fewshot import sample_fewshot

    return sample_fewshot(list(items), per_class, seed)


def _load_images(spec, root: Path, part: str, work: Path, image_size: int, per_class: int | None, seed: int):
    """uint8 images (N, H, W, 3) at the backbone's input size, their labels and the class names, via the
    image store."""
    import numpy as np

    from prompt_ot.data.registry import classnames_of
    from prompt_ot.data.store import build_store

    split = spec.load_split(root)
    items = _balanced(split[part], per_class, seed)
    store = build_store(items, spec.image_root(root), work / f"{spec.name}_{part}", mode="test", image_size=image_size)
    images = torch.from_numpy(np.stack([store[i] for i in range(len(store))]))
    return images, torch.as_tensor(store.labels, dtype=torch.long), classnames_of(split)


def _normalise(images_uint8: torch.Tensor, mean, std) -> torch.Tensor:
    x = images_uint8.permute(0, 3, 1, 2).float().div_(255.0)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def random_views(images_uint8: torch.Tensor, rng) -> torch.Tensor:
    """Each (H, W, 3) uint8 image of the batch as one training view: the random resized crop of
    ``prompt_ot.data.augment.crop_box`` (``rng`` draws it: a numpy Generator) resized back to H x W (bilinear,
    antialiased) and flipped left-right with probability 1/2; uint8, same shape."""
    from torchvision.transforms.v2 import functional as TF

    from prompt_ot.data.augment import crop_box

    height, width = images_uint8.shape[1:3]
    views = []
    for image in images_uint8.permute(0, 3, 1, 2):
        top, left, h, w = crop_box(height, width, rng)
        view = TF.resized_crop(image, top, left, h, w, [height, width], antialias=True)
        views.append(TF.horizontal_flip(view) if rng.random() < 0.5 else view)
    return torch.stack(views).permute(0, 2, 3, 1).contiguous()


def _lr_at(step: int, total: int, config: PretrainConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
    return 0.5 * config.lr * (1 + math.cos(math.pi * min(1.0, progress)))


def zero_shot_accuracy(model, images, labels, classnames, template, preprocess, batch_size=512) -> float:
    """Top-1 accuracy (%) of the frozen model with one template, as the zero-shot method evaluates."""
    model.eval()
    model.set_classnames(classnames, template)
    with torch.no_grad():
        text = model.frozen_class_text_features()
        correct = 0
        for start in range(0, len(labels), batch_size):
            x = _normalise(images[start : start + batch_size], preprocess.mean, preprocess.std)
            pred = (model.frozen_image_features(x) @ text.t()).argmax(-1)
            correct += int((pred == labels[start : start + batch_size]).sum())
    return 100.0 * correct / max(1, len(labels))


def pretrain(
    backbone: str,
    config: PretrainConfig,
    data_root: str | Path,
    work_dir: str | Path,
    log: Callable[[str], None] = print,
) -> tuple[dict[str, torch.Tensor], dict]:
    """Train ``backbone`` (an open_clip architecture) from scratch; returns its state dict and a report."""
    import open_clip

    from prompt_ot.data.registry import dataset_spec
    from prompt_ot.models.backbone import load_backbone
    from prompt_ot.models.prompted import PromptConfig, PromptedCLIP

    if config.threads:
        torch.set_num_threads(config.threads)
    started = time.perf_counter()
    clip, tokenizer, preprocess = load_backbone(backbone, None)
    model = PromptedCLIP(clip, tokenizer, PromptConfig(0, 0, 0, 0, ctx_init=None))
    for p in clip.parameters():
        p.requires_grad_(True)
    root, work = Path(data_root), Path(work_dir)
    images, labels, classnames, specs, offsets = [], [], [], [], []
    for name in config.datasets:
        spec = dataset_spec(name)
        x, y, split_names = _load_images(
            spec, root, "train", work, preprocess.image_size, config.images_per_class.get(name), config.seed
        )
        repeat = int(config.repeat.get(name, 1))
        offsets.append(len(classnames))
        images.append(x.repeat(repeat, 1, 1, 1))
        labels.append(y.repeat(repeat) + len(classnames))
        names = [c.replace("_", " ") for c in split_names]
        classnames += names
        specs.append(spec)
        log(f"pretrain data: {name}: {len(y)} images x {repeat}, {len(names)} classes")
    images, labels = torch.cat(images), torch.cat(labels)
    # every caption (class x template) tokenised once; a batch picks one per image
    captions = tokenizer([t.format(c) for c in classnames for t in config.templates])
    n_templates = len(config.templates)
    generator = torch.Generator().manual_seed(config.seed)
    steps_per_epoch = len(labels) // config.batch_size
    total = steps_per_epoch * config.epochs
    if total == 0:
        raise UserError(f"pretraining has {len(labels)} images, fewer than one batch of {config.batch_size}")
    decay = [p for n, p in clip.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in clip.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
    )
    loss_fn = open_clip.ClipLoss()
    clip.train()
    step = 0
    for epoch in range(config.epochs):
        order = torch.randperm(len(labels), generator=generator)
        epoch_loss, epoch_started = 0.0, time.perf_counter()
        for b in range(steps_per_epoch):
            index = order[b * config.batch_size : (b + 1) * config.batch_size]
            template = torch.randint(n_templates, (len(index),), generator=generator)
            tokens = captions[labels[index] * n_templates + template]
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, total, config)
            batch = images[index]
            if config.crops:
                import numpy as np

                batch = random_views(batch, np.random.default_rng([config.seed, epoch, b]))
            x = _normalise(batch, preprocess.mean, preprocess.std)
            image_features = F.normalize(model.encode_image(x, use_prompts=False), dim=-1)
            text_features = F.normalize(model.encode_tokens(tokens, use_prompts=False), dim=-1)
            loss = loss_fn(image_features, text_features, clip.logit_scale.exp())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                clip.logit_scale.clamp_(0, math.log(100))
            epoch_loss += float(loss.detach())
            step += 1
            if (b + 1) % 20 == 0 or b + 1 == steps_per_epoch:
                log(
                    f"pretrain epoch {epoch + 1}/{config.epochs} step {b + 1}/{steps_per_epoch} "
                    f"loss {epoch_loss / (b + 1):.4f} ({time.perf_counter() - epoch_started:.0f}s)"
                )
    clip.eval()
    for p in clip.parameters():
        p.requires_grad_(False)
    accuracy = {}
    for spec in specs:
        x, y, names = _load_images(spec, root, "test", work, preprocess.image_size, None, config.seed)
        accuracy[spec.name] = zero_shot_accuracy(model, x, y, names, spec.template, preprocess)
        log(
            f"zero-shot accuracy of the pretrained backbone on {spec.name} test ({len(y)} images, "
            f"{len(names)} classes, template {spec.template!r}): {accuracy[spec.name]:.2f}%"
        )
    report = {
        "backbone": backbone,
        "config": asdict(config),
        "zero_shot_accuracy": accuracy,
        "steps": total,
        "images_per_epoch": len(labels),
        "seconds": time.perf_counter() - started,
    }
    state = {k: v.detach().contiguous().clone() for k, v in clip.state_dict().items()}
    return state, report
