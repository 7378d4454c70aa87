"""`python -m prompt_ot evaluate`: accuracy of trained prompts on the test caches of a protocol.

base2novel: base and novel test classes of the dataset, each relabelled from 0, and their harmonic mean;
cross_dataset / domain_generalization: the source and every ``--targets`` dataset with all classes;
few_shot: all classes. The backbone runs at the precision of the run's recipe. Methods whose image encoder is
unprompted (zero-shot, CoOp, KgCoOp) are evaluated as a matrix product over the cached frozen image features
when the cache has the run's precision; the others (and those of another precision) run the encoder on the
cached, already preprocessed test images. The prompts' provenance record must name the run being labelled
(method, recipe, backbone and weights, dataset, subset, shots, seed), else nothing is written. Writes the
metrics file (with the provenance and the recipe) and ``predictions.npz`` beside it (with the prompts' sha256).

Several seeds of one (method, dataset, shots) can be evaluated in one process: ``--seed 1 2 3`` with one
``--prompts`` and one ``--out`` (and ``--reuse``) per seed, in the same order (what ``evaluate: {pack: true}`` makes
Snakemake run). The backbone is loaded and the test caches are read once; each seed is evaluated as it would be
alone, so every file it writes has the same bytes as its own job's. Every seed's prompts are checked before any is
evaluated.

``--reuse`` takes the test sets another evaluation of the same prompts already scored from its ``predictions.npz``
(domain generalisation reuses the cross-dataset job's source test set): refused unless that file names the same
prompts (sha256) and holds this test cache's labels. The metrics are the same bytes as when evaluating again.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prompt_ot.utils import args as check


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml")
    check.backbone_key_option(parser)
    parser.add_argument(
        "--protocol", required=True, choices=["base2novel", "cross_dataset", "domain_generalization", "few_shot"]
    )
    parser.add_argument("--method", required=True, type=check.non_empty)
    parser.add_argument(
        "--dataset", required=True, type=check.dataset_name, help="the dataset the prompts were trained on"
    )
    parser.add_argument("--shots", type=check.positive_int, required=True)
    parser.add_argument(
        "--seed", nargs="+", type=check.non_negative_int, required=True, help="one seed, or several evaluated in turn"
    )
    parser.add_argument(
        "--prompts",
        nargs="+",
        required=True,
        type=check.existing_file,
        help="prompts.safetensors written by 'train' (one per seed)",
    )
    parser.add_argument(
        "--test-cache-root", required=True, type=check.existing_dir, help="folder holding one test cache per dataset"
    )
    parser.add_argument(
        "--targets", nargs="*", default=[], type=check.dataset_name, help="further datasets to test on (all classes)"
    )
    parser.add_argument(
        "--reuse",
        nargs="+",
        type=check.existing_file,
        help="predictions.npz of another evaluation of the same prompts: its test sets are not evaluated again "
        "(one per seed)",
    )
    parser.add_argument(
        "--out", nargs="+", required=True, type=check.out_file, help="metrics file to write (JSON; one per seed)"
    )
    parser.add_argument(
        "--device", default="auto", type=check.device_name, help="auto (a free GPU, else the CPU), cpu, cuda:N"
    )


class _CachedTestImages:
    """The rows of a test cache's image store, with the cache's (possibly relabelled) labels."""

    def __init__(self, part):
        from prompt_ot.data.augment import TestImages

        pre = part.index["preprocess"]
        self.images = TestImages(part.store, tuple(pre["mean"]), tuple(pre["std"]))
        self.rows, self.labels = part.rows.tolist(), part.labels.tolist()

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.images[self.rows[i]][0], self.labels[i]


def evaluate_part(model, method, part, templates, batch_size: int, device: str, precision: str = "fp32"):
    """One test set: cached features when the image encoder is frozen and the cache has the run's precision, else
    a forward of the (prompted) encoder over the cached test images. ``model()`` builds the prompted model (once):
    zero-shot CLIP on cached features needs none. ``templates``: the dataset's (a string is one); zero-shot CLIP
    ensembles them when there are several, every other method uses the first."""
    import torch

    from prompt_ot.cache import evaluate_cached, uses_frozen_image_encoder
    from prompt_ot.evaluate import ensemble, evaluate, evaluated
    from prompt_ot.precision import autocast
    from prompt_ot.templates import as_templates

    templates = list(as_templates(templates))
    template = templates[0]
    if len(templates) > 1 and not method.trains:  # zero-shot CLIP's ensemble of the dataset's templates
        if part.precision == precision and all(t in part.templates for t in templates):
            class_text = ensemble([part.text_features(t) for t in templates])
        else:
            prompted = model()
            with torch.no_grad(), autocast(device, precision):
                texts = []
                for t in templates:
                    prompted.set_classnames(part.classnames, t)
                    texts.append(prompted.class_text_features().float().cpu())
            class_text = ensemble(texts)
        if part.precision == precision:
            return evaluate_cached(part, class_text)
        with autocast(device, precision):
            return evaluate(
                model(), _CachedTestImages(part), part.classnames, template, batch_size, device, class_text=class_text
            )
    if not uses_frozen_image_encoder(method) or part.precision != precision:
        with autocast(device, precision):
            return evaluate(
                model(), _CachedTestImages(part), part.classnames, template, batch_size=batch_size, device=device
            )
    if method.prompts.conditional:  # each image its own class prompts, from its (cached) frozen image feature
        prompted = model()
        prompted.set_classnames(part.classnames, template)
        with torch.no_grad(), autocast(device, precision):
            features = part.image_features.to(device, prompted.dtype)
            predictions = torch.cat(
                [prompted.conditional_logits(chunk).argmax(-1).cpu() for chunk in features.split(batch_size)]
            )
        return evaluated(predictions, part.labels)
    if method.prompts.text_depth == 0 and template in part.templates:
        class_text = part.text_features(template)
    else:
        prompted = model()
        prompted.set_classnames(part.classnames, template)
        with torch.no_grad(), autocast(device, precision):
            class_text = prompted.class_text_features().float()
    return evaluate_cached(part, class_text)


def _reused_predictions(path, prompts_sha256: str, parts: dict) -> dict:
    """The predictions (key -> tensor) that ``path`` (another evaluation's predictions.npz) holds for ``parts``, after
    checking it scored the same prompts and the same test images (its labels are the test cache's)."""
    import numpy as np
    import torch

    from prompt_ot.errors import UserError
    from prompt_ot.utils.io import npz_arrays

    try:
        stored = npz_arrays(path)
    except ValueError as err:  # not numpy's, or cut short
        raise UserError(f"--reuse {path}: not a predictions file written by 'evaluate' ({err}); rerun its job") from err
    sha = stored.get("prompts_sha256")
    if sha is None or str(sha) != prompts_sha256:
        raise UserError(
            f"--reuse {path} was written for other prompts than --prompts (sha256 "
            f"{'not recorded' if sha is None else str(sha)[:12]} against {prompts_sha256[:12]}); rerun the job that "
            "writes it, or leave out --reuse"
        )
    reused = {}
    for key, (part, _) in parts.items():
        if f"{key}/predictions" not in stored:
            continue
        labels = stored.get(f"{key}/labels")
        if labels is None or not np.array_equal(labels, part.labels.numpy()):
            raise UserError(
                f"--reuse {path}: its {key!r} test set is not this test cache's (other images or labels); rerun "
                "the job that writes it, or leave out --reuse"
            )
        reused[key] = torch.from_numpy(stored[f"{key}/predictions"])
    return reused


def _check_targets(args) -> None:
    """--targets goes with the protocols that test on other datasets, and only with them."""
    from prompt_ot.errors import UserError

    if args.protocol in ("cross_dataset", "domain_generalization") and not args.targets:
        raise UserError(f"--targets is required for the {args.protocol} protocol; name the datasets to test on")
    if args.protocol in ("base2novel", "few_shot") and args.targets:
        raise UserError(
            f"--targets {' '.join(args.targets)}: the {args.protocol} protocol tests on --dataset only; "
            "drop --targets, or use --protocol cross_dataset or domain_generalization"
        )


def _check_seeds(args) -> None:
    """One --prompts and one --out (and --reuse) per --seed, the seeds distinct."""
    from prompt_ot.errors import UserError

    n = len(args.seed)
    given = {"--prompts": len(args.prompts), "--out": len(args.out)}
    if args.reuse is not None:
        given["--reuse"] = len(args.reuse)
    wrong = {option: count for option, count in given.items() if count != n}
    if wrong:
        counts = ", ".join(f"{count} {option}" for option, count in wrong.items())
        raise UserError(f"{n} --seed but {counts}: give one value of each per seed, in the seeds' order")
    if len(set(args.seed)) != n:
        raise UserError(f"--seed {' '.join(map(str, args.seed))} names a seed twice; give each seed once")
    if len({str(Path(out).resolve()) for out in args.out}) != n:
        raise UserError("--out names one file for two seeds; give each seed its own metrics file")


def run(args) -> int:
    import functools

    import numpy as np

    from prompt_ot import provenance
    from prompt_ot.cache import TestFeatures
    from prompt_ot.checkpoint import load_prompts
    from prompt_ot.config import (
        SUBSET_OF,
        TRAINED_BY,
        base_method,
        load_params,
        resolve_method,
        resolve_run,
        select_backbone,
    )
    from prompt_ot.data.registry import dataset_spec
    from prompt_ot.devices import pick_device
    from prompt_ot.evaluate import class_metrics, evaluated, harmonic_mean
    from prompt_ot.methods import build_model
    from prompt_ot.models.backbone import load_backbone
    from prompt_ot.results import RunMetrics, write_metrics
    from prompt_ot.tracking import tracker_for
    from prompt_ot.utils.io import atomic_write_bytes, npz_bytes, sha256_file

    check.check_device(args.device)
    _check_targets(args)
    _check_seeds(args)
    params = select_backbone(load_params(args.params), args.backbone_key, args.params)
    resolve_method(params, args.method, args.params)  # an unknown method is named as such, not as a recipe gap
    method, recipe = resolve_run(params, args.method, args.protocol, args.dataset, args.shots, args.params)
    backbone, pretrained = params["backbone"]["name"], params["backbone"]["pretrained"]
    weights = provenance.weights_identity(pretrained)
    loaded = []  # every seed's prompts, checked before any is evaluated
    for seed, prompts_path in zip(args.seed, args.prompts):
        prompts, meta = load_prompts(prompts_path)
        provenance.check(
            meta.get("provenance"),
            {
                "method": method.name,
                "recipe": recipe.name,
                "backbone": backbone,
                "weights": weights,
                "dataset": args.dataset,
                "subset": SUBSET_OF[TRAINED_BY[args.protocol]],
                "shots": args.shots,
                "seed": seed,
            },
            str(prompts_path),
        )
        loaded.append((prompts, meta))
    device = pick_device(args.device)

    root = Path(args.test_cache_root)
    if args.protocol == "base2novel":
        test = TestFeatures(root / args.dataset, backbone=backbone)
        parts = {"base": (test.subset("base"), args.dataset), "novel": (test.subset("novel"), args.dataset)}
    elif args.protocol == "few_shot":
        parts = {"all": (TestFeatures(root / args.dataset, backbone=backbone), args.dataset)}
    else:
        names = [args.dataset] + [t for t in args.targets if t != args.dataset]
        parts = {name: (TestFeatures(root / name, backbone=backbone), name) for name in names}
    batch_size = params.get("evaluate", {}).get("batch_size", 256)

    @functools.cache
    def frozen():
        """The frozen backbone and its tokenizer, loaded once for every seed (as a training pack shares it)."""
        clip, tokenizer, _ = load_backbone(backbone, pretrained, precision=recipe.precision)
        return clip, tokenizer

    def evaluate_seed(seed, prompts_path, prompts, meta, out, reuse) -> None:
        """One seed, as its own job would evaluate it."""

        @functools.cache
        def model():
            clip, tokenizer = frozen()
            prompted = build_model(method, clip, tokenizer, seed=seed)
            prompted.load_prompt_state(prompts)
            return prompted.to(device).eval()

        prompts_sha256 = sha256_file(prompts_path)
        reused = _reused_predictions(reuse, prompts_sha256, parts) if reuse else {}
        accuracy, counts, per_class = {}, {}, {}
        predictions = {"prompts_sha256": np.array(prompts_sha256)}  # what --reuse checks
        for key, (part, dataset) in parts.items():
            if key in reused:
                result = evaluated(reused[key], part.labels)
            else:
                result = evaluate_part(
                    model, method, part, dataset_spec(dataset).zero_shot_templates, batch_size, device, recipe.precision
                )
            accuracy[key], counts[key] = result.accuracy, result.n
            per_class[key] = class_metrics(result.predictions, result.labels, part.classnames)
            predictions[f"{key}/predictions"] = result.predictions.numpy()
            predictions[f"{key}/labels"] = result.labels.numpy()
            source = f" (predictions from {reuse})" if key in reused else ""
            print(f"{args.protocol} {method.name} {key}: {result.accuracy:.2f}% of {result.n}{source}", flush=True)
        hm = harmonic_mean(accuracy["base"], accuracy["novel"]) if args.protocol == "base2novel" else None
        regulariser = method.regulariser or {}
        adaptive = regulariser.get("adaptive") not in (None, False)
        # an adaptive lambda is reported at its value after the tested epoch (written by the train stage)
        weight = meta.get("lambda", regulariser.get("weight")) if adaptive else regulariser.get("weight")
        metrics = RunMetrics(
            protocol=args.protocol,
            method=method.name,
            dataset=args.dataset,
            seed=seed,
            shots=args.shots,
            backbone=backbone,
            pretrained=pretrained,
            accuracy=accuracy,
            n=counts,
            epoch=meta.get("epoch"),
            hm=hm,
            base_method=base_method(params, method.name),
            regulariser_weight=weight,
            regulariser_adaptive=adaptive,
            recipe=recipe.name,
            epochs=recipe.epochs,
            precision=recipe.precision,
            provenance=meta["provenance"],
            recipe_values=recipe.to_dict(),
            class_metrics=per_class,
        )
        out = Path(out)
        predictions_path = out.with_name("predictions.npz")
        atomic_write_bytes(predictions_path, npz_bytes(predictions))  # the same predictions, the same bytes
        write_metrics(out, metrics)
        tracker = tracker_for(params, args.params)
        tags = {
            "method": method.name,
            "base_method": metrics.base_method,
            "recipe": recipe.name,
            "dataset": args.dataset,
            "seed": seed,
            "protocol": args.protocol,
            "shots": args.shots,
        }
        name = f"evaluate/{args.protocol}/{method.name}/{args.dataset}_{args.shots}shot/seed{seed}"
        run_params = {
            "prompts": prompts_path,
            "targets": list(parts),
            "recipe": recipe.to_dict(),
            "provenance": meta["provenance"],
            "tested_epoch": meta.get("epoch"),
            # the class names and templates each test set's prompts used (params.yaml may override a dataset's defaults)
            "test_sets": {dataset: provenance.dataset_options(dataset) for _, dataset in parts.values()},
        }
        if reused:
            run_params["reused"] = {"from": str(reuse), "test_sets": sorted(reused)}
        with tracker.run(name=name, kind="evaluate", params=run_params, tags=tags, run_dir=out.parent) as tracked:
            values = {f"accuracy/{k}": v for k, v in accuracy.items()} | ({"hm": hm} if hm is not None else {})
            values |= {
                f"{name}/{k}": c[name] for k, c in per_class.items() for name in ("balanced_accuracy", "macro_f1")
            }
            tracked.log_metrics(values)
            tracked.log_artifact(out)
            tracked.log_artifact(predictions_path)
        print(f"wrote {out}" + (f"  (HM {hm:.2f})" if hm is not None else ""))

    reuses = args.reuse or [None] * len(args.seed)
    for seed, prompts_path, (prompts, meta), out, reuse in zip(args.seed, args.prompts, loaded, args.out, reuses):
        evaluate_seed(seed, prompts_path, prompts, meta, out, reuse)
    return 0
