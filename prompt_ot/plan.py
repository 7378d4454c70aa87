"""What a grid will cost before it runs: its jobs, each training job's peak accelerator memory and time, the grid's
GPU-hours and its wall time on N GPUs (``python -m prompt_ot plan``; docs/plan.md).

Jobs are counted from the grid exactly as the pipelines define them (``config.trained_runs``,
``config.evaluated_runs``, the ``datasets`` list). Memory and time come from the cost model below; its two
calibrated constants were fitted to CPU measurements by ``bench/plan_calibrate.py``
(reports/perf/plan_calibration.json); the GPU constants are assumptions, not measured here.

Cost model
----------
Shapes come from the open_clip model config (``open_clip.get_model_config``: widths, layers, heads, context length,
image and patch size); no model is built. ``w`` is a tower's width, ``L`` its layers.

Tokens. An image is ``T_v = 1 + (image_size / patch_size)^2 (+ vision prompt tokens)`` tokens. A prompted class text
is *not* 77 tokens: the suite cuts the text at the end-of-text token and computes the shared prefix (start token and
the ``n`` context tokens, ``P = 1 + n``) once per group (``prompted.shared_prefix_text``), so each class costs its own
``t`` tokens (class-name tokens, ".", end-of-text, plus MaPLe's fixed words); ``t`` defaults to
``CLASS_TOKENS`` (6, the CoOp benchmark's class names' mean is 4 to 5 BPE tokens plus 2).

Stored activations (what autograd keeps from the forward to the backward), in elements:

- vision tower, when gradients flow through it (vision prompts, or MaPLe's coupled ones):
  ``B * T_v * w_v * (L_v - 1 + LAST_BLOCK + BACKWARD_BLOCKS) * F_VISION`` (the last block runs for the class token
  alone, keeping about a quarter of a block: its input, norm and keys/values; the backward's working set adds about
  one block, ``BACKWARD_BLOCKS``, in either tower);
- text tower, when the method has text prompts (``text_depth > 0``: every class's prompt is re-encoded with
  gradients every step): ``L_t + BACKWARD_BLOCKS`` blocks of
  ``F_TEXT * w_t * (S * t + G * P) + KV * w_t * S * (P + t)`` where ``S`` is the number of class sequences
  (``C``; CoCoOp ``B * C``: each image its own prompts), ``G`` the number of prefixes (1; CoCoOp ``B``) and the
  second term each class's keys and values over prefix and own tokens (``KV`` = 2). With
  ``train: {text_chunk: N}`` the classes are encoded ``N`` at a time under activation checkpointing (the chunks of
  ``prompted.shared_prefix_text``): what is stored is one chunk's activations (during its recomputation in the
  backward pass) plus every chunk's inputs and outputs (``S * D``), at the price of a second text forward;
- methods without text prompts (or without vision prompts) run that tower without gradients: nothing is stored,
  only one block's working set is alive (``NO_GRAD_BLOCK * tokens * w``) and the output features;
- regularised methods (prompt_ot*, promptsrc, kgcoop, pointwise_l1) also need the frozen model's features: the
  frozen class texts are computed once before training (``C * D``, resident), the frozen image features come from
  the training-view cache when the grid caches them (``config.view_cache_settings``), else from a frozen forward
  each step that stores nothing but its output (``B * D``; its working set is smaller than the backward's, which
  comes after it);
- the batch of images (``B * 3 * H * W`` float32), logits and loss terms (``B * C``; CoCoOp ``B * C * D``) and, for
  the OT regularisers, the cost matrix and plan over the ``B + C`` joint points (``(B + C)^2``).

The step's peak is the batch, the logits and loss terms, plus the larger of what is stored (the towers with
gradients, with the backward's working set) and a tower without gradients' working set (freed
before the next tower runs).

Bytes per element: 4 in fp32, 2 in bf16 / fp16 (activations; the batch stays float32). ``F_VISION`` and ``F_TEXT``
(elements kept per token and width unit per block: the norms, q/k/v, attention output, residuals and the MLP's
4w-wide hidden layer and its activation) are calibrated.

Resident memory (the plan adds it; the tests compare the step's peak alone, excluding it on both sides): the
backbone's parameters (fp16: 2 bytes for the matrices as ``precision.py`` casts them, embeddings 4; else 4), bf16's
cast copies of the weights of every tower that stores activations (autocast's half copies are saved for the
backward: 2 bytes per weight), the prompts with their gradients and momentum, the frozen class texts, and the
framework's own context (``CONTEXT_BYTES``, an assumption: CUDA context and allocator slack).

Time. A forward costs ``2 * params-touched * tokens`` FLOPs (12 w^2 per token per block) plus attention
``4 * tokens * keys * w`` per block. A tower run with gradients costs 2 forwards, not 3: the backbone is frozen, so
the backward computes input gradients only, no weight gradients (about one forward); chunked text costs 3 (its
forward runs again). A step's FLOPs divided by the throughput (``peak * efficiency``), plus a fixed per-step
overhead (kernel launches, the optimiser, the loader), is its time; an epoch is ``floor(C * shots / B)`` steps (the
last partial batch is dropped, as Dassl does). On the CPU the throughput is measured (the calibration file); on a
GPU it is ``GPU_PEAK_FLOPS[precision] * GPU_EFFICIENCY`` with ``GPU_STEP_OVERHEAD_S`` per step: assumed H100 SXM
figures (989 TFLOP/s dense bf16/fp16, 67 TFLOP/s fp32 without TF32), **not measured here**.

Cache and evaluation jobs are one frozen (cache) or prompted (evaluate) forward over their images; download, split
and report jobs run on the CPU and count no GPU time. The wall time on N GPUs schedules the GPU jobs greedily,
longest first, each on the device that frees first, ignoring the order the stages impose (a lower bound when
dependencies serialise the grid).
"""

from __future__ import annotations

import json
import math
import re
import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path

from prompt_ot.errors import UserError

CALIBRATION_PATH = Path(__file__).resolve().parents[1] / "reports" / "perf" / "plan_calibration.json"

# ----------------------------------------------------------------------------- constants of the cost model
CLASS_TOKENS = 6  # a class prompt's own tokens after the context: name tokens, ".", end-of-text
KV = 2  # each class's keys and values over prefix and own tokens, per text block
LAST_BLOCK = 0.25  # the vision tower's last block runs for the class token alone
BACKWARD_BLOCKS = 1.0  # the backward's working set: about one block's activations (gradients), on top
NO_GRAD_BLOCK = 17  # elements per token and width unit alive in a forward without gradients (CoOp's measured steps)
# calibrated on the CPU by bench/plan_calibrate.py (the file overrides these defaults when present)
F_VISION = 20.0
F_TEXT = 20.0
CPU_FLOPS = 5e10
# assumed, not measured here: an H100 SXM's dense throughput, the share a prompt-learning step reaches, the fixed
# cost of a step (launches, optimiser, loader) and of the framework's context
GPU_PEAK_FLOPS = {"fp32": 67e12, "bf16": 989e12, "fp16": 989e12}
GPU_EFFICIENCY = 0.3
GPU_STEP_OVERHEAD_S = 0.015
CONTEXT_BYTES = 600 * 2**20
BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
REGULARISED_FROZEN_IMAGE = ("ot", "promptsrc", "pointwise_l1")  # regulariser kinds that read frozen image features


def calibration() -> dict:
    """The calibrated constants: reports/perf/plan_calibration.json when it exists, else the defaults above."""
    values = {"F_VISION": F_VISION, "F_TEXT": F_TEXT, "CPU_FLOPS": CPU_FLOPS}
    if CALIBRATION_PATH.is_file():
        data = json.loads(CALIBRATION_PATH.read_text(encoding="utf-8"))
        values |= {k: float(v) for k, v in data.get("constants", {}).items() if k in values}
    return values


# ----------------------------------------------------------------------------- sizes
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KIB|MIB|GIB|TIB|K|M|G|T)?\s*$", re.IGNORECASE)
_UNITS = {
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "K": 2**10,
    "M": 2**20,
    "G": 2**30,
    "T": 2**40,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_memory(text) -> int:
    """Bytes of a size such as "24GB" (10^9), "24GiB" or "24G" (2^30), "80000MB"; a bad one is one UserError."""
    match = _SIZE.match(str(text))
    value = float(match.group(1)) if match else 0.0
    if not match or not math.isfinite(value) or value <= 0:
        raise UserError(
            f"--gpu-memory {text!r} is not a memory size; write a positive number and a unit, e.g. 24GB, 24GiB, "
            "16G or 80000MB"
        )
    return int(value * _UNITS[(match.group(2) or "B").upper()])


def human_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def human_hours(seconds: float) -> str:
    if seconds >= 360:
        return f"{seconds / 3600:.2f} h"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


# ----------------------------------------------------------------------------- the backbone's shape
@dataclass(frozen=True)
class Shape:
    """A CLIP ViT's dimensions, read from its open_clip config."""

    name: str
    embed_dim: int
    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    mlp_ratio: float
    text_width: int
    text_layers: int
    text_heads: int
    context_length: int
    vocab_size: int

    @property
    def patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def block_params(self, width: int) -> int:
        return int((4 + 2 * self.mlp_ratio) * width * width + (9 + 2 * self.mlp_ratio) * width)

    @property
    def vision_params(self) -> int:
        w = self.vision_width
        return (
            3 * self.patch_size**2 * w
            + (self.patches + 2) * w
            + 4 * w
            + self.vision_layers * self.block_params(w)
            + w * self.embed_dim
        )

    @property
    def text_params(self) -> int:
        w = self.text_width
        return (
            (self.vocab_size + self.context_length) * w
            + 2 * w
            + self.text_layers * self.block_params(w)
            + w * self.embed_dim
        )

    @property
    def embedding_params(self) -> int:
        return (self.vocab_size + self.context_length) * self.text_width + (self.patches + 2) * self.vision_width

    @property
    def params(self) -> int:
        return self.vision_params + self.text_params + 1


def backbone_shape(name: str) -> Shape:
    """The dimensions of backbone ``name`` from its open_clip config (the package's tiny ones included)."""
    import open_clip

    from prompt_ot.models.backbone import register_shipped_configs

    register_shipped_configs()
    config = open_clip.get_model_config(name)
    if config is None:
        from prompt_ot.models.matrix import model_config

        config = model_config(name)  # an unknown name is refused there, with the names like it
    vision, text = config["vision_cfg"], config["text_cfg"]
    if isinstance(vision.get("layers"), (list, tuple)) or "timm_model_name" in vision or "hf_model_name" in text:
        raise UserError(
            f"plan: backbone {name} is not a CLIP ViT with CLIP's text transformer; its cost is not modelled"
        )
    size = vision.get("image_size", 224)
    size = size if isinstance(size, int) else int(size[0])
    width = vision.get("width", 768)
    return Shape(
        name=name,
        embed_dim=int(config["embed_dim"]),
        image_size=size,
        patch_size=int(vision.get("patch_size", 16)),
        vision_width=int(width),
        vision_layers=int(vision.get("layers", 12)),
        vision_heads=int(width // vision.get("head_width", 64)),
        mlp_ratio=float(vision.get("mlp_ratio", 4.0)),
        text_width=int(text.get("width", 512)),
        text_layers=int(text.get("layers", 12)),
        text_heads=int(text.get("heads", 8)),
        context_length=int(text.get("context_length", 77)),
        vocab_size=int(text.get("vocab_size", 49408)),
    )


# ----------------------------------------------------------------------------- one training job's cost
@dataclass(frozen=True)
class JobShape:
    """What a training step's cost depends on."""

    text_depth: int
    text_ctx: int
    vision_depth: int
    vision_ctx: int
    coupled: bool
    conditional: bool
    fixed_words: int  # MaPLe's fixed words after the context
    regulariser: str | None  # the regulariser's kind
    classes: int
    batch_size: int
    precision: str
    text_chunk: int = 0
    frozen_image_forward: bool = False  # no cache supplies the frozen image features: a frozen forward each step
    class_tokens: float = CLASS_TOKENS

    @property
    def vision_grad(self) -> bool:
        return self.vision_depth > 0 or self.coupled

    @property
    def text_grad(self) -> bool:
        return self.text_depth > 0


def job_shape(method, recipe_or_config, classes: int, text_chunk: int = 0, frozen_image_forward: bool = False, **kw):
    """The :class:`JobShape` of a method (``MethodConfig``) trained with a recipe or ``TrainConfig``."""
    p = method.prompts
    kind = (method.regulariser or {}).get("kind")
    return JobShape(
        text_depth=p.text_depth,
        text_ctx=p.text_ctx,
        vision_depth=p.vision_depth,
        vision_ctx=p.vision_ctx if p.vision_depth > 0 else 0,
        coupled=p.coupled,
        conditional=p.meta_net > 0,
        fixed_words=len(p.fixed_words.split()),
        regulariser=kind,
        classes=int(classes),
        batch_size=int(recipe_or_config.batch_size),
        precision=recipe_or_config.precision,
        text_chunk=int(text_chunk or 0),
        frozen_image_forward=bool(frozen_image_forward and kind in REGULARISED_FROZEN_IMAGE),
        **kw,
    )


@dataclass(frozen=True)
class Estimate:
    step_peak: float  # bytes allocated by one training step at its peak (resident memory excluded)
    resident: float  # parameters, prompt state, frozen class texts (the context excluded)
    step_flops: float

    @property
    def peak(self) -> float:
        """Peak accelerator memory: resident + the step's peak + the framework's context."""
        return self.resident + self.step_peak + CONTEXT_BYTES


def estimate(shape: Shape, job: JobShape, constants: dict | None = None) -> Estimate:
    """Memory and FLOPs of one training step of ``job`` on ``shape`` (the module docstring's cost model)."""
    c = constants or calibration()
    b, c_cls, bytes_ = job.batch_size, job.classes, BYTES[job.precision]
    tv = 1 + shape.patches + (job.vision_ctx if job.vision_grad else 0)
    wv, lv, wt, lt, d = shape.vision_width, shape.vision_layers, shape.text_width, shape.text_layers, shape.embed_dim
    # vision
    if job.vision_grad:
        vision = b * tv * wv * (lv - 1 + LAST_BLOCK + BACKWARD_BLOCKS) * c["F_VISION"] * bytes_
    else:
        vision = b * tv * wv * NO_GRAD_BLOCK * bytes_  # one block's working set, freed after the forward
    # the frozen forward's working set is smaller than the backward's that follows it: only its output stays
    frozen = b * d * 4 * 2 if job.frozen_image_forward else 0.0
    # text
    t = job.class_tokens + job.fixed_words
    prefix = 1 + job.text_ctx
    sequences = c_cls * (b if job.conditional else 1)
    groups = b if job.conditional else 1
    text_out = sequences * d * 4 * 3  # features, normalised, float copies
    if job.text_grad:

        def text_blocks(rows: float, prefixes: float) -> float:
            per_block = c["F_TEXT"] * wt * (rows * t + prefixes * prefix) + KV * wt * rows * (prefix + t)
            return (lt + BACKWARD_BLOCKS) * per_block * bytes_

        if 0 < job.text_chunk < sequences:
            text = text_blocks(job.text_chunk, min(groups, job.text_chunk)) + text_out
        else:
            text = text_blocks(sequences, groups) + text_out
    else:
        text = 0.0  # encoded once before training
    images = b * 3 * shape.image_size**2 * 4
    logits = 6 * b * c_cls * 4 * (d if job.conditional else 1)
    ot = 8 * (b + c_cls) ** 2 * 4 if job.regulariser == "ot" else 0.0
    # a tower run without gradients frees its working set before the next one runs; stored activations add up
    stored = (vision if job.vision_grad else 0.0) + text + frozen
    step_peak = images + max(stored, 0.0 if job.vision_grad else vision) + logits + ot + 4 * b * d * 4
    # resident
    prompt_params = (
        job.text_depth * job.text_ctx * wt
        + (0 if job.coupled else job.vision_depth * job.vision_ctx * wv)
        + (job.text_depth * (wt * wv + wv) if job.coupled else 0)
        + (2 * d * max(1, d // 16) + wt * d if job.conditional else 0)
    )
    if job.precision == "fp16":
        weights = (shape.params - shape.embedding_params) * 2 + shape.embedding_params * 4
    else:
        weights = shape.params * 4
    casts = 0
    if job.precision == "bf16":  # autocast's bf16 copies of the weights, saved for the backward
        casts = 2 * (shape.vision_layers * shape.block_params(wv) * job.vision_grad)
        casts += 2 * (shape.text_layers * shape.block_params(wt) * job.text_grad)
    resident = weights + casts + 3 * prompt_params * bytes_ + 2 * c_cls * d * 4
    return Estimate(step_peak=step_peak, resident=resident, step_flops=step_flops(shape, job))


def _forward_flops(tokens: float, keys: float, width: int, layers: float, mlp_ratio: float) -> float:
    return layers * (2 * tokens * (4 + 2 * mlp_ratio) * width * width + 4 * tokens * keys * width)


def step_flops(shape: Shape, job: JobShape) -> float:
    """FLOPs of one training step: forwards (x2 with the input-only backward of a frozen tower)."""
    b, r = job.batch_size, shape.mlp_ratio
    tv = 1 + shape.patches + (job.vision_ctx if job.vision_grad else 0)
    image = 2 * shape.patches * 3 * shape.patch_size**2 * shape.vision_width + _forward_flops(
        tv, tv, shape.vision_width, shape.vision_layers, r
    )
    flops = b * image * (2 if job.vision_grad else 1)
    if job.frozen_image_forward:
        flops += b * image
    if job.text_grad:
        t = job.class_tokens + job.fixed_words
        prefix = 1 + job.text_ctx
        sequences = job.classes * (b if job.conditional else 1)
        groups = b if job.conditional else 1
        text = sequences * _forward_flops(t, prefix + t, shape.text_width, shape.text_layers, r)
        text += groups * _forward_flops(prefix, prefix, shape.text_width, shape.text_layers, r)
        flops += text * (3 if 0 < job.text_chunk < sequences else 2)
    return flops


def epoch_seconds(est: Estimate, steps: int, device: str = "gpu", constants: dict | None = None, precision="fp32"):
    """Seconds of an epoch of ``steps`` steps on the assumed GPU (or the calibrated CPU)."""
    if device == "cpu":
        return steps * est.step_flops / (constants or calibration())["CPU_FLOPS"]
    return steps * (est.step_flops / (GPU_PEAK_FLOPS[precision] * GPU_EFFICIENCY) + GPU_STEP_OVERHEAD_S)


def forward_seconds(shape: Shape, images: int, classes: int, prompts: bool, precision: str) -> float:
    """A forward over ``images`` images and ``classes`` class texts on the assumed GPU (cache and evaluation)."""
    tv = 1 + shape.patches + (4 if prompts else 0)
    image = _forward_flops(tv, tv, shape.vision_width, shape.vision_layers, shape.mlp_ratio)
    text = _forward_flops(CLASS_TOKENS + 5, CLASS_TOKENS + 5, shape.text_width, shape.text_layers, shape.mlp_ratio)
    flops = images * image + classes * text
    return flops / (GPU_PEAK_FLOPS[precision] * GPU_EFFICIENCY) + math.ceil(images / 256) * GPU_STEP_OVERHEAD_S


# ----------------------------------------------------------------------------- advice for a job that does not fit
def fitting_settings(shape: Shape, job: JobShape, limit: int, variant: str | None = None) -> list[str]:
    """The settings that make ``job`` fit in ``limit`` bytes: a smaller batch, fp16, text chunks (each on its own)."""
    where = f"variants.{variant}.train" if variant else "train"
    advice = []
    low, high = 0, job.batch_size  # the estimate grows with the batch: the largest smaller batch that fits
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if estimate(shape, replace(job, batch_size=middle)).peak <= limit else (low, middle)
    if low >= 1:
        advice.append(f"{where}: {{batch_size: {low}}}")
    if job.precision != "fp16" and estimate(shape, replace(job, precision="fp16")).peak <= limit:
        advice.append(f"{where}: {{precision: fp16}}")
    if job.text_grad:
        sequences = job.classes * (job.batch_size if job.conditional else 1)
        low, high = 0, sequences  # the largest chunk that fits (the estimate grows with the chunk)
        while high - low > 1:
            middle = (low + high) // 2
            fits = estimate(shape, replace(job, text_chunk=middle)).peak <= limit
            low, high = (middle, high) if fits else (low, middle)
        if low >= 1:
            advice.append(f"train: {{text_chunk: {low}}}")
    return advice


# ----------------------------------------------------------------------------- the grid
STAGES = ("download", "backbone", "cache test", "split", "cache train", "train", "evaluate", "report")
GPU_STAGES = ("backbone", "cache test", "cache train", "train", "evaluate")


@dataclass
class Job:
    stage: str
    protocol: str  # "all" for jobs every protocol shares
    seconds: float = 0.0  # on one GPU; 0 for CPU jobs
    kind: tuple | None = None  # a training job's kind


@dataclass
class Kind:
    """A kind of training job: method x class count x recipe (batch, precision), with its estimate."""

    method: str
    base_method: str
    classes: int | None
    batch_size: int
    precision: str
    epochs: int
    images: int | None  # per epoch
    text_chunk: int
    jobs: int = 0
    datasets: set = field(default_factory=set)
    estimate: Estimate | None = None
    epoch_s: float | None = None
    advice: list = field(default_factory=list)
    fits: bool | None = None
    job: JobShape | None = None


@dataclass
class Plan:
    shape: Shape
    jobs: list[Job]
    kinds: dict
    unknown: dict  # dataset -> why its class count is unknown
    gpus: int
    memory: int | None

    def counts(self) -> dict[str, dict[str, int]]:
        table: dict[str, dict[str, int]] = {stage: {} for stage in STAGES}
        for job in self.jobs:
            table[job.stage][job.protocol] = table[job.stage].get(job.protocol, 0) + 1
        return table

    @property
    def total_seconds(self) -> float:
        return sum(job.seconds for job in self.jobs)

    @property
    def wall_seconds(self) -> float:
        return wall_time([job.seconds for job in self.jobs if job.seconds > 0], self.gpus)


def wall_time(durations: list[float], devices: int) -> float:
    """The makespan of ``durations`` scheduled greedily, longest first, each on the device that frees first."""
    import heapq

    if devices < 1:
        raise ValueError("devices must be >= 1")
    loads = [0.0] * devices
    for d in sorted(durations, reverse=True):
        heapq.heappush(loads, heapq.heappop(loads) + d)
    return max(loads)


def class_count(params: dict, dataset: str, source: str) -> tuple[int | None, str]:
    """A dataset's class count: its recipe's ``num_classes``, else its split file when downloaded; (None, why)."""
    from prompt_ot.data.registry import classnames_of, dataset_spec

    spec = dataset_spec(dataset)
    if spec.extra.get("num_classes"):
        return int(spec.extra["num_classes"]), "recipe"
    if spec.classnames_fn is not None:
        return len(spec.classnames_fn()), "class list"
    root = Path(source).parent / params["paths"]["data"] if Path(source).is_file() else Path(params["paths"]["data"])
    try:
        return len(classnames_of(spec.load_split(root))), "split file"
    except (UserError, OSError, ValueError, KeyError) as err:
        return None, f"no class count in its recipe and its split is not readable under {root} ({err})"


def test_images(dataset: str) -> int:
    from prompt_ot.data.registry import dataset_spec

    sizes = dataset_spec(dataset).extra.get("split_sizes")
    return int(sizes[2]) if sizes else 0


def build_plan(params: dict, source: str = "params.yaml", gpus: int = 1, memory: int | None = None) -> Plan:
    """Every job of the grid with its GPU seconds, and each kind of training job's estimate."""
    from prompt_ot.config import (
        SUBSET_OF,
        TRAINED_BY,
        base_method,
        evaluated_runs,
        protocol_methods,
        resolve_run,
        trained_runs,
        view_cache_settings,
    )

    shape = backbone_shape(params["backbone"]["name"])
    seeds = params["seeds"]
    protocols = params["protocols"]
    pack = bool((params.get("train") or {}).get("pack", False))
    eval_pack = bool((params.get("evaluate") or {}).get("pack", False))
    text_chunk = int((params.get("train") or {}).get("text_chunk", 0) or 0)
    jobs: list[Job] = []
    unknown: dict[str, str] = {}
    classes: dict[str, int | None] = {}

    def n_classes(dataset: str) -> int | None:
        if dataset not in classes:
            count, why = class_count(params, dataset, source)
            classes[dataset] = count
            if count is None:
                unknown[dataset] = why
        return classes[dataset]

    # splits and training-view caches: one per (dataset, subset, shots, seed), shared by the protocols using it
    manifests: dict[tuple, list[str]] = {}
    for protocol, dataset, shots in trained_runs(params):
        for seed in seeds:
            manifests.setdefault((dataset, SUBSET_OF[protocol], shots, seed), []).append(protocol)
    # the datasets whose test features are cached: every dataset some run is evaluated on
    targets = {"cross_dataset": protocols["cross_dataset"]["evaluate"]["targets"]}
    targets["domain_generalization"] = protocols["domain_generalization"]["evaluate"]["targets"]
    evaluated = evaluated_runs(params)
    tested = []
    for protocol, _, dataset, _, _ in evaluated:
        for d in [dataset, *targets.get(protocol, [])]:
            if d not in tested:
                tested.append(d)
    pretrain = list((params.get("pretrain") or {}).get("datasets", []))
    downloaded = [d for d in params["datasets"] if d in set(tested) | {m[0] for m in manifests} | set(pretrain)]
    precision_of_tests = "fp16"

    jobs += [Job("download", "all") for _ in downloaded]
    jobs.append(Job("backbone", "all"))
    for d in tested:
        n = n_classes(d) or 0
        jobs.append(Job("cache test", "all", forward_seconds(shape, test_images(d), n, False, precision_of_tests)))
    view_settings = {}
    for (dataset, subset, shots, _), users in manifests.items():
        key = (dataset, subset, shots)
        if key not in view_settings:
            view_settings[key] = view_cache_settings(params, dataset, subset, shots)
        protocol = "+".join(dict.fromkeys(users))
        n = n_classes(dataset)
        images = (math.ceil(n / 2) if subset == "base" else n) * shots if n else 0
        epochs = max(1, view_settings[key]["epochs"])
        jobs.append(Job("split", protocol))
        jobs.append(Job("cache train", protocol, forward_seconds(shape, images * epochs, 0, False, "fp16")))

    kinds: dict[tuple, Kind] = {}
    for protocol, dataset, shots in trained_runs(params):
        n = n_classes(dataset)
        trained_classes = None if n is None else (math.ceil(n / 2) if SUBSET_OF[protocol] == "base" else n)
        for name in protocol_methods(params, protocol):
            method, recipe = resolve_run(params, name, protocol, dataset, shots, source)
            cached = view_settings[(dataset, SUBSET_OF[protocol], shots)]["epochs"] >= recipe.epochs
            key = (name, trained_classes, recipe.batch_size, recipe.precision, recipe.epochs, shots)
            kind = kinds.get(key)
            if kind is None:
                kind = kinds[key] = Kind(
                    method=name,
                    base_method=base_method(params, name),
                    classes=trained_classes,
                    batch_size=recipe.batch_size,
                    precision=recipe.precision,
                    epochs=recipe.epochs,
                    images=None if trained_classes is None else trained_classes * shots,
                    text_chunk=text_chunk,
                )
                if method.trains and recipe.trains and trained_classes is not None:
                    kind.job = job_shape(
                        method, recipe, trained_classes, text_chunk=text_chunk, frozen_image_forward=not cached
                    )
                    kind.estimate = estimate(shape, kind.job)
                    steps = max(1, kind.images // recipe.batch_size)
                    kind.epoch_s = epoch_seconds(kind.estimate, steps, precision=recipe.precision)
                    if memory is not None:
                        kind.fits = kind.estimate.peak <= memory
                        if not kind.fits:
                            variant = name if name in (params.get("variants") or {}) else None
                            kind.advice = fitting_settings(shape, kind.job, memory, variant)
                elif not (method.trains and recipe.trains):
                    kind.epoch_s = 0.0
            kind.datasets.add(dataset)
            runs = 1 if pack else len(seeds)
            per_run = (kind.epoch_s or 0.0) * recipe.epochs
            for _ in range(runs):
                kind.jobs += 1
                jobs.append(Job("train", protocol, per_run * (len(seeds) if pack else 1), kind=key))
    packs: dict[tuple, Job] = {}  # evaluate: {pack: true}: one job evaluates every seed of a run in turn
    for protocol, name, dataset, shots, _ in evaluated:
        trained = TRAINED_BY[protocol]
        method, recipe = resolve_run(params, name, trained, dataset, shots, source)
        seconds = 0.0
        for d in [dataset, *targets.get(protocol, [])]:
            n = n_classes(d) or 0
            seconds += forward_seconds(shape, test_images(d), n, method.prompts.vision_depth > 0, recipe.precision)
        key = (protocol, name, dataset, shots)
        if eval_pack and key in packs:
            packs[key].seconds += seconds
            continue
        packs[key] = Job("evaluate", protocol, seconds)
        jobs.append(packs[key])
    jobs.append(Job("report", "all"))
    return Plan(shape=shape, jobs=jobs, kinds=kinds, unknown=unknown, gpus=gpus, memory=memory)


# ----------------------------------------------------------------------------- measuring a step's real peak
class LiveTensorMeter:
    """The live tensor storage allocated while it is active, and its peak, in bytes.

    A ``TorchDispatchMode`` sees every op's outputs; a storage seen for the first time that no input of the op
    shares (views and in-place results share their input's storage; a view of a parameter allocates nothing) is
    counted once by its ``data_ptr`` and released by ``weakref.finalize`` when torch frees it. Memory resident
    before the meter starts (parameters, buffers, cached features) is not counted.
    """

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        meter = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                meter._record(args, kwargs, out)
                return out

        self._mode = _Mode()
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}

    def _record(self, args, kwargs, out) -> None:
        import torch
        from torch.utils._pytree import tree_flatten

        inputs = {
            t.untyped_storage().data_ptr()
            for t in tree_flatten((args, kwargs or {}))[0]
            if isinstance(t, torch.Tensor) and t.device.type != "meta"
        }
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes == 0 or key in inputs or key in self._sizes:
                continue
            self._sizes[key] = nbytes
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._release, key, nbytes)

    def _release(self, key: int, nbytes: int) -> None:
        if self._sizes.pop(key, None) is not None:
            self.live -= nbytes

    def __enter__(self):
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)


def class_names(classes: int) -> list[str]:
    """The class names of a measured step: "class 0", "class 1", ..."""
    return [f"class {i}" for i in range(classes)]


def class_tokens(tokenizer, names: list[str]) -> float:
    """The mean own tokens of class prompts ``names`` (name tokens, ".", end-of-text): :class:`JobShape`'s
    ``class_tokens`` for those names."""
    tokens = tokenizer([f"{name}." for name in names])
    return float((tokens.argmax(dim=-1)).float().mean())  # start-of-text at 0: argmax = tokens before end-of-text


def measure_step(method, clip, tokenizer, image_size: int, classes: int, batch: int, text_chunk: int = 0):
    """(peak bytes, seconds) of one training step of ``method`` on ``clip``, CPU, float32: the trainer's own step
    (``train._Run`` and ``train._packed_step``) on random images of ``classes`` classes, after one warm-up step
    (so that the cached text layout and the optimiser's momentum exist, as in every later step); resident memory
    excluded."""
    import time

    import torch

    from prompt_ot.methods import build_model
    from prompt_ot.train import RunSpec, TrainConfig, _packed_step, _Run

    class Images(torch.utils.data.Dataset):
        def __init__(self):
            g = torch.Generator().manual_seed(0)
            self.images = torch.randn(2 * batch, 3, image_size, image_size, generator=g)
            self.labels = torch.arange(2 * batch) % classes

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, i):
            return self.images[i], int(self.labels[i])

    model = build_model(method, clip, tokenizer)
    model.text_chunk = text_chunk
    names = class_names(classes)
    config = TrainConfig(epochs=1, batch_size=batch, device="cpu", num_workers=0, warmup_epochs=0)
    device = torch.device("cpu")
    run = _Run(RunSpec(method, model, Images(), names, config), device)
    model.eval()
    run.begin_epoch(0, device)
    prompts_text = model.config.text_depth > 0
    fixed = {}
    if not prompts_text:
        with torch.no_grad():
            fixed = {id(run): model.class_text_features().float()}
    _packed_step([run], 0, device, "fp32", fixed, prompts_text)
    meter = LiveTensorMeter()
    started = time.perf_counter()
    with meter:
        _packed_step([run], 0, device, "fp32", fixed, prompts_text)
    return meter.peak, time.perf_counter() - started
