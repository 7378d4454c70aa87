"""Train a method's prompts on a labelled image dataset: the engine, free of any pipeline or tracker.

``train(method, model, dataset, classnames, config)`` runs a recipe (``prompt_ot.recipes`` resolves which:
SGD with momentum and weight decay, constant warm-up epochs, then Dassl's cosine schedule, batches that
drop the last partial one as Dassl's loader does) and returns the trained prompts and per-epoch metrics.
The batch order depends only on (seed, epoch) and a dataset with ``set_epoch`` gets the epoch before its
batches are drawn, so a run killed after epoch k resumes from its checkpoint to exactly the uninterrupted
weights.

Precision: ``fp32``; ``bf16`` autocast (the fast GPU path); ``fp16`` as the released code runs
(``PREC: fp16``): the backbone's weights and the prompts in half precision (open_clip's ``precision="fp16"``,
which casts exactly the tensors OpenAI's CLIP keeps in half and computes layer norms in fp32), plain SGD on
the half prompts, no loss scaling.

``train_packed(runs)`` trains several runs (other seeds, other datasets, or other methods with the same
prompt layout) in one process on one shared frozen backbone: each step concatenates every run's batch
and class prompts into one image forward and one text forward, with each row getting its own run's
prompts, and sums the runs' losses. A run's loss depends only on its own prompts and SGD is
element-wise, so each run follows its own trajectory: the same as alone, up to float rounding of the
larger matrix products. ``train`` is ``train_packed`` with one run.

On a GPU a step is one stream of device work: views are augmented on the device from the uint8 store,
the OT plan is solved on the device, the optimiser is fused, and running sums stay on the device until
the epoch ends (the only host synchronisation).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from prompt_ot.errors import UserError, unknown_name
from prompt_ot.methods import MethodConfig
from prompt_ot.precision import PRECISIONS, autocast

AUGMENT_ON = ("auto", "cpu", "device")
# TrainConfig keys that say how to run, not what: left out of a checkpoint's fingerprint (results do not depend on
# them beyond float rounding), so a run resumes under other values
OPERATIONAL = ("device", "num_workers", "deterministic", "augment_on", "text_chunk")
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
    deterministic: bool = False  # deterministic algorithms (and cuBLAS workspace) on the GPU
    augment_on: str = "auto"  # where training views are augmented: auto = the training device
    text_chunk: int = 0  # class prompts encoded this many at a time under activation checkpointing; 0 = all at once

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
        if self.augment_on not in AUGMENT_ON:
            raise unknown_name("augment_on", self.augment_on, AUGMENT_ON)
        if isinstance(self.text_chunk, bool) or not isinstance(self.text_chunk, int) or self.text_chunk < 0:
            raise UserError(
                f"train.text_chunk={self.text_chunk!r} must be an integer >= 0 (0: off; N: N class prompts at a time)"
            )


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
    """The rate of (0-based) ``epoch`` under Dassl's schedule: ``warmup_lr`` for the warm-up epochs, then
    ``CosineAnnealingLR(T_max=epochs)`` with its count restarted when the warm-up ends (Dassl's
    ``WARMUP_RECOUNT``): lr(e) = lr / 2 * (1 + cos(pi * (e - warmup_epochs) / epochs)). So the first epoch
    after the warm-up runs at the full rate, and the cosine never reaches 0 within the run."""
    if epoch < config.warmup_epochs:
        return config.warmup_lr
    return 0.5 * config.lr * (1.0 + math.cos(math.pi * (epoch - config.warmup_epochs) / config.epochs))


def epoch_batches(n_items: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The shuffled batches of one epoch; depends only on (seed, epoch).

    As Dassl's training loader (``drop_last`` only when the set holds at least one batch): the last partial
    batch is dropped, and a set smaller than one batch is one batch of all its items.
    """
    generator = torch.Generator().manual_seed(int(hashlib.sha256(f"{seed}:{epoch}".encode()).hexdigest()[:15], 16))
    order = torch.randperm(n_items, generator=generator).tolist()
    if n_items < batch_size:
        return [order] if order else []
    n_batches = n_items // batch_size
    return [order[b * batch_size : (b + 1) * batch_size] for b in range(n_batches)]


def run_fingerprint(method: MethodConfig, config: TrainConfig, classnames: list[str], backbone: str) -> str:
    """Identifies what a checkpoint belongs to; resuming from another method or backbone is refused.

    An adaptive lambda's settings enter with their defaults filled in, so a changed default is another run too."""
    payload = {
        "method": method.to_dict(),
        "train": {k: v for k, v in asdict(config).items() if k not in OPERATIONAL},
        "classes": classnames,
        "backbone": backbone,
    }
    regulariser = method.regulariser or {}
    if regulariser.get("adaptive") not in (None, False):
        from prompt_ot.losses.adaptive import check_adaptive

        payload["adaptive"] = check_adaptive(regulariser["adaptive"], float(regulariser.get("weight", 10.0))).to_dict()
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _index_dataset(dataset):
    """Wrap a map-style dataset so that batches carry their item indices."""

    class Indexed(torch.utils.data.Dataset):
        def __len__(self):
            return len(dataset)

        def __getitem__(self, i):
            image, label = dataset[i][:2]
            return image, label, i

    return Indexed()


def set_deterministic(enabled: bool) -> None:
    """Deterministic kernels (``torch.use_deterministic_algorithms``) and cuBLAS's fixed workspace.

    ``CUBLAS_WORKSPACE_CONFIG`` is read when cuBLAS starts, so the train command sets it before any CUDA work.
    """
    import os

    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    if torch.are_deterministic_algorithms_enabled() != enabled:  # the call imports torch._inductor: seconds
        torch.use_deterministic_algorithms(enabled)


def make_optimizer(params, config: TrainConfig, device: torch.device) -> torch.optim.SGD:
    """The paper's SGD; fused into one kernel on a GPU (the CPU keeps the reference per-tensor loop)."""
    extra = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, **extra)


@dataclass
class RunSpec:
    """One run of a pack: what ``train`` takes as arguments."""

    method: MethodConfig
    model: object  # PromptedCLIP; the runs of a pack share its frozen ``clip``
    dataset: object
    classnames: list[str]
    config: TrainConfig = TrainConfig()
    checkpoint_dir: str | Path | None = None
    frozen_image_features: FrozenImageFeatures | None = None
    backbone: str = ""
    on_epoch_end: Callable[[dict], None] | None = None
    frozen_template: str | None = None  # the frozen class texts' template; None: the method's, or CLIP's generic


GENERIC_TEMPLATE = "a photo of a {}."


class _Run:
    """A run's training state inside the engine."""

    def __init__(self, spec: RunSpec, device: torch.device):
        from prompt_ot.losses import build_regulariser

        self.spec = spec
        model = spec.model
        half = model.dtype == torch.float16
        if spec.method.trains and half != (spec.config.precision == "fp16"):
            raise UserError(
                f"precision {spec.config.precision} needs a backbone loaded at "
                f"{'fp16' if not half else 'fp32'} weights, this one has {model.dtype}; load it with "
                f"load_backbone(..., precision={spec.config.precision!r})"
            )
        model.to(device)
        from prompt_ot.templates import is_template_set, template_set

        frozen_template = spec.frozen_template or spec.method.frozen_template_for(GENERIC_TEMPLATE)
        ensemble = template_set(frozen_template) if is_template_set(frozen_template) else None
        model.set_classnames(spec.classnames, GENERIC_TEMPLATE if ensemble else frozen_template)
        self.regulariser = build_regulariser(spec.method.regulariser)
        if self.regulariser is not None:
            self.regulariser.to(device)
        self.params = model.trainable_parameters()
        self.trains = bool(spec.method.trains and self.params)
        self.history: list[dict] = []
        self.start_epoch = 0
        self.fingerprint = run_fingerprint(spec.method, spec.config, spec.classnames, spec.backbone)
        self.ckpt_path = Path(spec.checkpoint_dir) / CHECKPOINT_NAME if spec.checkpoint_dir else None
        self.needs_frozen_image = self.regulariser is not None and self.regulariser.needs_frozen_image
        # an adaptive lambda (prompt_ot.losses.adaptive): this run's own, checkpointed with its prompts
        self.dual = getattr(self.regulariser, "dual", None)
        self.on_device_views = False
        if not self.trains:
            return
        if len(spec.dataset) == 0:
            raise UserError("the training set is empty; check the manifest")
        self.optimizer = make_optimizer(self.params, spec.config, device)
        # Gaussian prompt aggregation: after epoch e the prompts, weighted by gpa[e - 1], join a running sum that
        # replaces the prompts after the last epoch (and is checkpointed, so a resumed run ends identically)
        self.gpa = spec.method.gpa_weights(spec.config.epochs)
        self.aggregate: dict[str, torch.Tensor] = {}
        if self.ckpt_path is not None and self.ckpt_path.exists():
            from prompt_ot.checkpoint import load_checkpoint

            regulariser_state: dict[str, torch.Tensor] = {}
            self.start_epoch, self.history = load_checkpoint(
                self.ckpt_path,
                model,
                self.optimizer,
                self.fingerprint,
                aggregate=self.aggregate,
                regulariser=regulariser_state,
            )
            self.aggregate = {k: v.to(device) for k, v in self.aggregate.items()}
            if self.dual is not None:
                self.dual.load_state(regulariser_state)
        with torch.no_grad(), autocast(device, spec.config.precision):
            self.frozen_class_text = (
                model.frozen_ensemble_text_features(ensemble) if ensemble else model.frozen_class_text_features()
            ).float()
        augment_on = spec.config.augment_on
        self.on_device_views = hasattr(spec.dataset, "device_batch") and (
            augment_on == "device" or (augment_on == "auto" and device.type == "cuda")
        )

    def begin_epoch(self, epoch: int, device: torch.device) -> None:
        config, dataset = self.spec.config, self.spec.dataset
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        self.batches = epoch_batches(len(dataset), config.batch_size, config.seed, epoch)
        if self.on_device_views:
            self.loader = ((*dataset.device_batch(batch, device), torch.as_tensor(batch)) for batch in self.batches)
        else:
            self.loader = iter(
                torch.utils.data.DataLoader(
                    _index_dataset(dataset),
                    batch_sampler=self.batches,
                    num_workers=config.num_workers,
                    pin_memory=device.type == "cuda",
                )
            )
        zero = torch.zeros((), device=device, dtype=torch.float64)
        self.sums = {"loss": zero.clone(), "ce": zero.clone(), "reg": zero.clone(), "correct": zero.clone()}
        if self.dual is not None:
            self.sums["ot"] = zero.clone()  # the unweighted term, which the budget bounds
        if hasattr(self.regulariser, "last_off_identity"):  # an OT regulariser: how far its plans are from identity
            self.sums["plan_off_identity"] = zero.clone()
        self.seen = 0
        self.started = time.perf_counter()


def _check_pack(runs: Sequence[_Run]) -> None:
    """Runs packed together must share the frozen backbone, the prompt layout and the recipe (but the seed)."""
    first = runs[0].spec
    for run in runs[1:]:
        spec = run.spec
        if spec.model.clip is not first.model.clip:
            raise UserError("packed runs must share one backbone object (build each model from the same clip)")
        if spec.model.config != first.model.config:
            raise UserError(
                f"packed runs need the same prompt layout: {spec.method.name} has {spec.model.config}, "
                f"{first.method.name} has {first.model.config}"
            )
        mine = {k: v for k, v in asdict(spec.config).items() if k != "seed"}
        theirs = {k: v for k, v in asdict(first.config).items() if k != "seed"}
        if mine != theirs:
            raise UserError(f"packed runs need the same training recipe apart from the seed: {mine} vs {theirs}")


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
    frozen_template: str | None = None,
) -> TrainResult:
    """Train ``model``'s prompts (a ``PromptedCLIP``) with ``method`` and return prompts and per-epoch metrics.

    ``frozen_image_features(epoch, indices)`` may supply the regulariser's frozen image features of the
    exact training views (the feature cache); then no frozen image forward runs during training.
    ``stop_after_epoch`` ends the run early (as a kill would), for tests of resumption. ``frozen_template`` is the
    template of the frozen class texts S_c (the dataset's, for a method whose frozen template is "dataset").
    """
    spec = RunSpec(
        method,
        model,
        dataset,
        classnames,
        config,
        checkpoint_dir,
        frozen_image_features,
        backbone,
        on_epoch_end,
        frozen_template,
    )
    return train_packed([spec], stop_after_epoch=stop_after_epoch)[0]


def train_packed(specs: Sequence[RunSpec], stop_after_epoch: int | None = None) -> list[TrainResult]:
    """Train several runs at once on their shared frozen backbone; returns each run's ``TrainResult``.

    Each run keeps its own batches (its seed), optimiser, checkpoint (so a pack resumes, or a run resumes
    alone, from the same files) and callbacks; only the backbone forwards are shared.
    """
    if not specs:
        return []
    for spec in specs:
        if spec.method.trains:
            spec.config.validate()
    config = specs[0].config
    set_deterministic(config.deterministic)
    device = resolve_device(config.device)
    runs = [_Run(spec, device) for spec in specs]
    for run in runs:  # how the prompted class texts are encoded while training (the model's default is 0: off)
        run.spec.model.text_chunk = run.spec.config.text_chunk if run.trains else 0
    training = [run for run in runs if run.trains]
    if training:
        _check_pack(training)
    prompts_text = bool(training) and training[0].spec.model.config.text_depth > 0
    fixed_text = {}
    if training and not prompts_text:  # without text prompts class texts never change: encode them once
        with torch.no_grad(), autocast(device, config.precision):
            fixed_text = {id(run): run.spec.model.class_text_features().float() for run in training}

    for epoch in range(min((run.start_epoch for run in training), default=config.epochs), config.epochs):
        lr = learning_rate(config, epoch)
        active = [run for run in training if run.start_epoch <= epoch]
        for run in active:
            for group in run.optimizer.param_groups:
                group["lr"] = lr
            run.spec.model.eval()  # the backbone stays in inference mode; only the prompts learn
            run.begin_epoch(epoch, device)
        for step in range(max(len(run.batches) for run in active)):
            stepping = [run for run in active if step < len(run.batches)]
            _packed_step(stepping, epoch, device, config.precision, fixed_text, prompts_text)
        for run in active:
            _end_epoch(run, epoch, lr)
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            break
    return [
        TrainResult(prompts=run.spec.model.prompt_state(), history=run.history, resumed_from_epoch=run.start_epoch)
        for run in runs
    ]


def _packed_step(runs, epoch, device, precision, fixed_text, prompts_text) -> None:
    """One optimisation step of every run in ``runs``: shared forwards, summed losses, one backward.

    ``fixed_text`` maps ``id(run)`` to class-text features encoded once (runs without text prompts);
    ``prompts_text`` says the runs' class texts are prompted and re-encoded every step.
    """
    from prompt_ot.devices import to_device
    from prompt_ot.losses import RegulariserInputs
    from prompt_ot.models.prompted import packed_class_text_features, packed_image_features

    batches = [next(run.loader) for run in runs]
    images = torch.cat([b[0] for b in batches]).to(device, non_blocking=True)
    counts = [len(b[1]) for b in batches]
    models = [run.spec.model for run in runs]
    total = torch.zeros((), device=device)
    conditional = models[0].conditional
    with autocast(device, precision):
        image_all = packed_image_features(models, images, counts).split(counts)
        if conditional:  # each image its own class prompts (CoCoOp): B x C sequences per run, one forward each
            texts = [model.conditional_class_text(image) for model, image in zip(models, image_all)]
        else:
            texts = packed_class_text_features(models) if prompts_text else [fixed_text[id(run)] for run in runs]
        frozen_all = None
        if any(run.needs_frozen_image and run.spec.frozen_image_features is None for run in runs):
            frozen_all = models[0].frozen_image_features(images).split(counts)  # one frozen forward for all
        for k, (run, (_, labels, indices), image, class_text) in enumerate(zip(runs, batches, image_all, texts)):
            labels = labels.to(device, non_blocking=True)
            if conditional:
                logits = models[k].logit_scale * torch.einsum("bd,bcd->bc", image, class_text.to(image.dtype))
            else:
                logits = models[k].logit_scale * image @ class_text.t()
            if precision != "fp16":  # bf16 autocast: the loss in float32; fp16: half logits, as the released code
                logits = logits.float()
            ce = F.cross_entropy(logits, labels)
            reg = torch.zeros((), device=device)
            if run.regulariser is not None:
                frozen_image = None
                if run.needs_frozen_image:
                    supplied = run.spec.frozen_image_features
                    frozen_image = (
                        to_device(supplied(epoch, indices), device) if supplied is not None else frozen_all[k]
                    )
                reg = run.regulariser(
                    RegulariserInputs(
                        image=image.float(),
                        frozen_image=None if frozen_image is None else frozen_image.float(),
                        class_text=class_text.float(),
                        frozen_class_text=run.frozen_class_text,
                        labels=labels,
                        logits=logits.float(),
                        logit_scale=models[k].logit_scale.float(),
                    )
                )
            loss = ce + reg
            total = total + loss
            n = labels.shape[0]
            with torch.no_grad():
                run.sums["loss"] += loss.detach().double() * n
                run.sums["ce"] += ce.detach().double() * n
                run.sums["reg"] += reg.detach().double() * n
                run.sums["correct"] += (logits.argmax(-1) == labels).sum()
                if run.dual is not None:
                    run.sums["ot"] += run.dual.pending * n
                departure = getattr(run.regulariser, "last_off_identity", None)
                if departure is not None and "plan_off_identity" in run.sums:
                    run.sums["plan_off_identity"] += departure.double() * n
            run.seen += n
    for run in runs:
        run.optimizer.zero_grad(set_to_none=True)
    total.backward()  # no loss scaling in any precision (the released fp16 training has none either)
    for run in runs:
        run.optimizer.step()
        if run.regulariser is not None:
            run.regulariser.after_step()  # an adaptive lambda's dual update, on the device


def _end_epoch(run: _Run, epoch: int, lr: float) -> None:
    """Turn the device sums into the epoch's record (the one host synchronisation), checkpoint, report."""
    seen = max(run.seen, 1)
    if run.dual is not None:
        run.dual.end_epoch()  # a relative budget's reference is set after the first epoch
    sums = {k: v.item() for k, v in run.sums.items()}
    record = {
        "epoch": epoch + 1,
        "lr": lr,
        "loss": sums["loss"] / seen,
        "ce": sums["ce"] / seen,
        "regulariser": sums["reg"] / seen,
        "train_accuracy": int(sums["correct"]) / seen,
        "seconds": time.perf_counter() - run.started,
    }
    if "plan_off_identity" in sums:  # the epoch's mean share of the OT plans' mass off the identity coupling
        record["plan_off_identity"] = sums["plan_off_identity"] / seen
    if run.dual is not None:  # lambda after the epoch's last update, the epoch's mean OT term and its budget
        record["lambda"] = run.dual.value.item()
        record["ot_term"] = sums["ot"] / seen
        budget = run.dual.budget()
        if budget is not None:
            record["ot_budget"] = float(budget.item() if isinstance(budget, torch.Tensor) else budget)
    if not math.isfinite(record["loss"]):
        raise FloatingPointError(f"loss became {record['loss']} in epoch {epoch + 1}; lower the lr or use fp32")
    run.history.append(record)
    if run.gpa is not None:
        _aggregate(run, epoch)
    if run.ckpt_path is not None:
        from prompt_ot.checkpoint import save_checkpoint

        save_checkpoint(
            run.ckpt_path,
            run.spec.model,
            run.optimizer,
            epoch + 1,
            run.history,
            run.fingerprint,
            aggregate=run.aggregate,
            regulariser=run.dual.state() if run.dual is not None else None,
        )
    if run.spec.on_epoch_end is not None:
        run.spec.on_epoch_end(record)


def _aggregate(run: _Run, epoch: int) -> None:
    """Add the prompts after (0-based) ``epoch``, weighted by its Gaussian weight, to the running sum; after the
    last epoch the sum replaces the prompts (what is saved, evaluated and checkpointed)."""
    weight = run.gpa[epoch]
    with torch.no_grad():
        for name, p in run.spec.model.named_parameters():
            if p.requires_grad:
                term = p.detach() * weight
                run.aggregate[name] = run.aggregate[name] + term if name in run.aggregate else term.clone()
        if epoch + 1 == run.spec.config.epochs:
            run.spec.model.load_prompt_state(run.aggregate)
