"""Trained prompts in use: classify any images with a run's prompts and any class list (novel classes included).

:func:`load_run` reads a training run's folder (``prompts.safetensors`` and its provenance record), resolves the
method (a variant's overrides included), recipe and backbone from the params file as the evaluate stage does, and
returns a :class:`TrainedRun` whose ``logits`` and ``predict`` score images against class names with the method's
own prompt scheme: conditional methods (CoCoOp) build each image's own class prompts. Images are preprocessed as
the backbone's eval preprocess (shorter side resized, bicubic, centre-cropped, normalised), as the test caches are.
"""

from __future__ import annotations

from pathlib import Path

from prompt_ot.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def _run_backbone(params: dict, record: dict, source: str) -> dict:
    """``params`` for the backbone the run was trained with: with a list of backbones, the entry whose name and
    weights the run's provenance record names."""
    from prompt_ot import provenance
    from prompt_ot.config import backbone_entries, select_backbone

    for key, entry in backbone_entries(params):
        if key is None:
            return params
        if (entry["name"], provenance.weights_identity(entry["pretrained"])) == (
            record.get("backbone"),
            record.get("weights"),
        ):
            return select_backbone(params, key, source)
    raise UserError(
        f"the run was trained with backbone {record.get('backbone')!r} ({record.get('weights')}), which no entry of "
        f"{source}'s backbone list is; pass the params file the run was trained with"
    )


def find_params(run_dir: str | Path) -> Path:
    """The params.yaml whose ``paths.runs`` folder contains ``run_dir``, looked for in ``run_dir``'s folders upwards."""
    import yaml

    run = Path(run_dir).resolve()
    for folder in [run, *run.parents]:
        candidate = folder / "params.yaml"
        if not candidate.is_file():
            continue
        try:
            raw = yaml.safe_load(candidate.read_text(encoding="utf-8")) or {}
            runs = (raw.get("paths") or {}).get("runs", "runs")
        except (yaml.YAMLError, UnicodeDecodeError, AttributeError, OSError):
            continue
        if not isinstance(runs, str):
            continue
        root = (folder / runs).resolve()
        if run == root or root in run.parents:
            return candidate
    raise UserError(
        f"no params.yaml above run folder {run_dir} has paths.runs containing it; pass the params file the run "
        "was trained with (--params, or params= in load_run)"
    )


def image_files(paths) -> list[Path]:
    """The image files of ``paths``: a folder gives its image files (recursively, sorted), a file itself."""
    found: list[Path] = []
    for text in paths:
        path = Path(text)
        if path.is_dir():
            files = sorted(
                (p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                key=lambda p: p.relative_to(path).as_posix(),
            )
            if not files:
                raise UserError(
                    f"folder {path} holds no image files ({', '.join(IMAGE_SUFFIXES)}); give a folder of images "
                    "or image files"
                )
            found += files
        elif path.is_file():
            found.append(path)
        else:
            raise UserError(f"image path {path} does not exist; give existing image files or folders")
    if not found:
        raise UserError("no images given; give image files or folders of images")
    return found


def read_classes_file(path: str | Path) -> list[str]:
    """One class name a line; blank lines are skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"class file {path} is not a UTF-8 text file ({err}); give one class name a line") from err
    except OSError as err:
        raise UserError(f"class file {path} cannot be read ({err}); give a text file of class names") from err
    return [line.strip() for line in text.splitlines() if line.strip()]


def check_classnames(classnames) -> list[str]:
    """The class names as a list; refuses an empty list, an empty name and a name given twice."""
    if isinstance(classnames, str):
        classnames = [classnames]
    names = [str(name).strip() for name in classnames]
    if not names:
        raise UserError("the class list is empty; give at least one class name (--classes or --classes-file)")
    if any(not name for name in names):
        raise UserError("a class name is empty; give each class a non-empty name")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise UserError(f"class names given more than once: {', '.join(twice)}; give each class once")
    return names


def _pixels(image, size: int):
    """uint8 HxWx3 pixels of a path or PIL image after the backbone's resize and centre crop."""
    from PIL import Image

    from prompt_ot.data.store import _DECODE_ERRORS, resize_center_crop

    if isinstance(image, Image.Image):
        return resize_center_crop(image, size)
    try:
        with Image.open(image) as opened:
            opened.load()
            return resize_center_crop(opened, size)
    except (Image.DecompressionBombError, *_DECODE_ERRORS) as err:
        raise UserError(
            f"image {image} cannot be read ({type(err).__name__}: {err}); remove it or give readable image files"
        ) from err


class TrainedRun:
    """A training run's prompts on its backbone, ready to classify images; see :func:`load_run`."""

    def __init__(self, run_dir, params=None, device: str = "auto", template: str | None = None):
        from prompt_ot import provenance
        from prompt_ot.checkpoint import load_prompts
        from prompt_ot.config import SUBSET_OF, TRAINED_BY, load_params, resolve_method, resolve_run
        from prompt_ot.data.registry import dataset_spec
        from prompt_ot.devices import pick_device
        from prompt_ot.methods import build_model
        from prompt_ot.models.backbone import load_backbone
        from prompt_ot.utils import args as check

        run = Path(run_dir)
        if not run.is_dir():
            raise UserError(f"run folder {run} does not exist or is not a folder; give a training run's folder")
        prompts_path = run / "prompts.safetensors"
        if not prompts_path.is_file():
            raise UserError(
                f"run folder {run} holds no prompts.safetensors; give the folder of a finished training run "
                "(the train stage writes it there), or train the run first"
            )
        check.check_device(device)
        params_path = Path(params) if params is not None else find_params(run)
        self.params = load_params(params_path)
        prompts, meta = load_prompts(prompts_path)
        record = meta.get("provenance")
        if not record or not all(record.get(k) is not None for k in ("method", "protocol", "dataset", "seed")):
            raise UserError(
                f"{prompts_path} holds no complete provenance record (written by an older version of prompt_ot); "
                "train the run again"
            )
        name, protocol, dataset = record["method"], record["protocol"], record["dataset"]
        shots, seed = record.get("shots"), record["seed"]
        resolve_method(self.params, name, str(params_path))
        method, recipe = resolve_run(self.params, name, protocol, dataset, shots, str(params_path))
        self.params = _run_backbone(self.params, record, str(params_path))
        backbone, pretrained = self.params["backbone"]["name"], self.params["backbone"]["pretrained"]
        provenance.check(
            record,
            {
                "method": method.name,
                "recipe": recipe.name,
                "backbone": backbone,
                "weights": provenance.weights_identity(pretrained),
                "dataset": dataset,
                "subset": SUBSET_OF[TRAINED_BY[protocol]],
            },
            str(prompts_path),
        )
        if template is not None:
            check.require("--template", template, check.template)
        spec = dataset_spec(dataset)
        self.templates = [template] if template is not None else list(spec.zero_shot_templates)
        self.template = self.templates[0]
        self.run_dir, self.method, self.recipe, self.dataset, self.provenance = run, method, recipe, dataset, record
        self.device = pick_device(device)
        clip, tokenizer, self.preprocess = load_backbone(backbone, pretrained, precision=recipe.precision)
        model = build_model(method, clip, tokenizer, seed=seed)
        model.load_prompt_state(prompts)
        self.model = model.to(self.device).eval()

    def _images(self, images):
        import torch

        from prompt_ot.data.augment import test_view

        if isinstance(images, (str, Path)) or hasattr(images, "convert"):
            images = [images]
        pre = self.preprocess
        views = [test_view(_pixels(image, pre.image_size), pre.mean, pre.std) for image in images]
        if not views:
            raise UserError("no images given; give image files or PIL images")
        return torch.stack(views)

    def logits(self, images, classnames, batch_size: int = 64):
        """Logits (N, C), float32 on the CPU: logit_scale times the cosine of each image's features with each class's
        prompted text features, as the model's forward computes them (per image for a conditional method)."""
        import torch

        from prompt_ot.evaluate import ensemble
        from prompt_ot.precision import autocast

        classnames = check_classnames(classnames)
        pixels = self._images(images)
        model = self.model
        with torch.no_grad(), autocast(self.device, self.recipe.precision):
            class_text = None
            if not model.conditional:
                texts = []
                # zero-shot CLIP ensembles the dataset's templates, as evaluation does; trained prompts use the first
                for t in self.templates if not self.method.trains else self.templates[:1]:
                    model.set_classnames(classnames, t)
                    texts.append(model.class_text_features())
                class_text = texts[0] if len(texts) == 1 else ensemble([t.float() for t in texts])
            else:
                model.set_classnames(classnames, self.template)
            out = []
            for chunk in pixels.split(batch_size):
                chunk = chunk.to(self.device)
                if class_text is None:
                    out.append(model(chunk).float().cpu())
                else:
                    out.append(model(chunk, class_text.to(model.dtype)).float().cpu())
        return torch.cat(out)

    def predict(self, images, classnames, top_k: int | None = None) -> list[list[tuple[str, float]]]:
        """Per image the ``top_k`` (class name, probability) pairs, most probable first (default: 5, or every class
        when there are fewer); probabilities are the softmax over ``classnames`` of :meth:`logits`."""
        import torch

        classnames = check_classnames(classnames)
        top_k = min(5, len(classnames)) if top_k is None else top_k
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise UserError(f"--top-k must be a positive integer, got {top_k!r}")
        if top_k > len(classnames):
            raise UserError(
                f"--top-k {top_k} is larger than the number of classes ({len(classnames)}); give a smaller --top-k "
                "or more class names"
            )
        probabilities = torch.softmax(self.logits(images, classnames).double(), dim=-1)
        values, indices = probabilities.topk(top_k, dim=-1, sorted=True)
        return [
            [(classnames[i], float(p)) for p, i in zip(row_p.tolist(), row_i.tolist())]
            for row_p, row_i in zip(values, indices)
        ]


def load_run(run_dir, params=None, device: str = "auto", template: str | None = None) -> TrainedRun:
    """A training run's prompts ready to classify images: ``.predict(images, classnames, top_k=None)`` and
    ``.logits(images, classnames)``. ``params``: the params file the run was trained with (default: the params.yaml
    whose ``paths.runs`` holds ``run_dir``); ``template``: the class-name template (default: the run's dataset's)."""
    return TrainedRun(run_dir, params=params, device=device, template=template)
