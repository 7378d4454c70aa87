"""`python -m prompt_ot train`: train one method's prompts on few-shot manifests, from their feature caches.

Inputs are explicit: the params file (backbone, recipe, variants), the manifest and the train cache (image
store plus the frozen features of every training view). The run's method and recipe are resolved from the
params for its protocol, dataset and shots (``prompt_ot.config.resolve_run``). Outputs go to ``--out``:
``prompts.safetensors`` (the epoch that evaluation uses, with the run's provenance record),
``train.json`` (per-epoch metrics, the recipe in force with every resolved value, the provenance) and
``checkpoint.safetensors`` (rewritten every epoch; an interrupted job resumes from it). Every run is also
an MLflow run.

Several runs (e.g. all seeds of one method and dataset) are trained packed in one process, sharing each
frozen-backbone forward, when ``--seed``, ``--manifest``, ``--train-cache`` and ``--out`` each list one
value per run; every run still writes its own folder, exactly as if it had been trained alone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from pathlib import Path

from prompt_ot.utils import args as check

SCHEDULER_VARIABLES = ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "SLURM_STEP_GPUS")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml", help="experiment parameters (default: params.yaml)")
    check.backbone_key_option(parser)
    parser.add_argument("--protocol", required=True, choices=["base2novel", "cross_dataset", "few_shot"])
    parser.add_argument(
        "--method", required=True, type=check.non_empty, help="a method of the registry or a variant from params.yaml"
    )
    parser.add_argument(
        "--seed", type=check.non_negative_int, nargs="+", required=True, help="one seed per run (several: a pack)"
    )
    parser.add_argument("--manifest", nargs="+", required=True, help="few-shot manifest written by 'split', per run")
    parser.add_argument("--train-cache", nargs="+", required=True, help="train cache written by 'cache train', per run")
    parser.add_argument(
        "--out",
        nargs="+",
        required=True,
        type=check.out_dir,
        help="run folder for prompts, metrics and checkpoint, per run",
    )
    parser.add_argument(
        "--device", default="auto", type=check.device_name, help="auto (a free GPU, else the CPU), cpu, cuda:N"
    )


def run_summary(method, recipe, config, result, params, args, job, device: str, seconds: float, pack: int) -> dict:
    from dataclasses import asdict

    return {
        "protocol": args.protocol,
        "method": method.name,
        "seed": job.seed,
        "manifest": str(job.manifest_path),
        "backbone": params["backbone"],
        "recipe": recipe.to_dict(),
        "provenance": job.provenance,
        "method_config": method.to_dict(),
        "train_config": asdict(config) | {"device": device},
        "eval_epoch": recipe.tested_epoch,
        "frozen_template": job.frozen_template,
        "frozen_image_features": job.frozen_source,
        "resumed_from_epoch": result.resumed_from_epoch,
        "history": result.history,
        "seconds": seconds,
        "packed_with": pack - 1,
        # what the scheduler gave this job: the GPUs it may use and, under SLURM, the job and its allocation
        "scheduler": {name.lower(): os.environ.get(name) for name in SCHEDULER_VARIABLES},
    }


class _Job:
    """One run of the command: its inputs, folder, log and tracked MLflow run."""

    def __init__(self, seed: int, manifest_path: str, cache_path: str, out: str):
        self.seed, self.manifest_path, self.cache_path, self.out = seed, manifest_path, cache_path, Path(out)

    def log(self, line: str) -> None:
        print(line, flush=True)
        self.log_file.write(line + "\n")
        self.log_file.flush()


def _stale_checkpoint(out: Path, fingerprint: str) -> bool:
    """True for the checkpoint of another run in a folder whose outputs are gone: what a workflow leaves when it
    reruns a job whose settings changed (`dvc exp run -S ...`, an edited params.yaml). DVC and Snakemake delete a
    job's outputs (prompts.safetensors, train.json) before they rerun it; the checkpoint is none of theirs (it is
    kept so that a killed job resumes), so it stays behind. A checkpoint of another run next to its outputs is
    refused and kept (``check_resumable``), as is a damaged one."""
    from prompt_ot.checkpoint import written_by_another_run
    from prompt_ot.train import CHECKPOINT_NAME

    path = out / CHECKPOINT_NAME
    if not path.is_file() or (out / "prompts.safetensors").exists() or (out / "train.json").exists():
        return False
    return written_by_another_run(path, fingerprint)


def _jobs(args) -> list[_Job]:
    from prompt_ot.errors import UserError

    lengths = {len(args.seed), len(args.manifest), len(args.train_cache), len(args.out)}
    if len(lengths) != 1:
        raise UserError(
            f"--seed, --manifest, --train-cache and --out need one value per packed run; got "
            f"{len(args.seed)}, {len(args.manifest)}, {len(args.train_cache)} and {len(args.out)}"
        )
    if len({Path(out).resolve() for out in args.out}) != len(args.out):
        raise UserError(f"packed runs need distinct --out folders, got {args.out}")
    check.check_device(args.device)
    return [_Job(*values) for values in zip(args.seed, args.manifest, args.train_cache, args.out)]


def _resolve(params, args, jobs):
    """The method and recipe of the pack (one dataset and shot count for all its runs), checked before any work."""
    from prompt_ot.config import SUBSET_OF, resolve_method, resolve_run
    from prompt_ot.data.fewshot import read_manifest
    from prompt_ot.errors import UserError

    resolve_method(params, args.method, args.params)  # an unknown method is named before any file is read
    check.require("--manifest", args.manifest, check.existing_file)
    check.require("--train-cache", args.train_cache, check.existing_dir)
    for job in jobs:
        job.manifest = read_manifest(job.manifest_path)
    first = jobs[0].manifest
    for job in jobs[1:]:
        if (job.manifest.dataset, job.manifest.shots) != (first.dataset, first.shots):
            raise UserError(
                f"packed runs must share a dataset and shot count: {job.manifest_path} is "
                f"{job.manifest.dataset} {job.manifest.shots}-shot, {jobs[0].manifest_path} is "
                f"{first.dataset} {first.shots}-shot"
            )
    for job in jobs:
        if job.manifest.subset != SUBSET_OF[args.protocol]:
            raise UserError(
                f"manifest {job.manifest_path} lists the {job.manifest.subset!r} classes, but "
                f"{args.protocol} trains on {SUBSET_OF[args.protocol]!r}; give the matching manifest"
            )
    return resolve_run(params, args.method, args.protocol, first.dataset, first.shots, args.params)


def run(args) -> int:
    jobs = _jobs(args)  # the options agree with each other: checked before anything is imported or read
    from prompt_ot import provenance
    from prompt_ot.cache import FrozenViewFeatures
    from prompt_ot.checkpoint import check_resumable, load_prompts, save_prompts
    from prompt_ot.config import base_method, load_params, select_backbone, train_config
    from prompt_ot.data.registry import dataset_spec
    from prompt_ot.devices import pick_device
    from prompt_ot.methods import build_model
    from prompt_ot.models.backbone import load_backbone
    from prompt_ot.tracking import tracker_for
    from prompt_ot.train import CHECKPOINT_NAME, RunSpec, TrainResult, run_fingerprint, set_deterministic, train_packed
    from prompt_ot.utils.io import atomic_write_text

    params = select_backbone(load_params(args.params), args.backbone_key, args.params)
    method, recipe = _resolve(params, args, jobs)
    set_deterministic(bool(params["train"].get("deterministic", False)))  # before any CUDA work
    backbone, pretrained = params["backbone"]["name"], params["backbone"]["pretrained"]
    backbone_id = f"{backbone}:{pretrained}"  # what a checkpoint's fingerprint names
    epochs, eval_epoch = recipe.epochs, recipe.tested_epoch
    device = pick_device(args.device)
    dataset = jobs[0].manifest.dataset
    frozen_template = method.frozen_template_for(dataset_spec(dataset).template)
    needs_frozen = method.regulariser is not None
    # Everything is checked before anything is written: a refused run changes nothing in any run folder.
    for job in jobs:
        job.cache = FrozenViewFeatures(job.cache_path, seed=job.seed, backbone=backbone)
        job.config = train_config(params, recipe, job.seed, device)
        job.frozen_template = frozen_template
        # cached frozen view features stand in for the frozen forward only when they are those of this run
        job.frozen_source = (
            "cache"
            if needs_frozen and job.cache.covers(epochs, recipe.precision)
            else ("computed while training" if needs_frozen else None)
        )
        fingerprint = run_fingerprint(method, job.config, job.manifest.classnames, backbone_id)
        job.stale = _stale_checkpoint(job.out, fingerprint)  # removed below, once every check has passed
        job.done = [] if job.stale else check_resumable(job.out / CHECKPOINT_NAME, fingerprint)
        job.provenance = provenance.record(
            method=method.name,
            base_method=base_method(params, method.name),
            recipe=recipe.name,
            protocol=args.protocol,
            backbone=backbone,
            pretrained=pretrained,
            dataset=dataset,
            subset=job.manifest.subset,
            shots=job.manifest.shots,
            seed=job.seed,
            manifest=job.manifest_path,
            sampler=job.manifest.sampler,
        )

    for job in jobs:
        if job.stale:
            (job.out / CHECKPOINT_NAME).unlink()
    trains = method.trains and recipe.trains  # zero-shot CLIP trains nothing: no backbone to load
    clip, tokenizer, _ = load_backbone(backbone, pretrained, precision=recipe.precision) if trains else (None,) * 3
    tracker = tracker_for(params, args.params)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        specs = []
        for job in jobs:
            job.out.mkdir(parents=True, exist_ok=True)
            job.log_file = stack.enter_context(open(job.out / "train.log", "a"))
            job.model = build_model(method, clip, tokenizer, seed=job.seed) if trains else None
            manifest = job.manifest
            name = f"train/{args.protocol}/{method.name}/{manifest.dataset}_{manifest.shots}shot/seed{job.seed}"
            packed = f", packed with {len(jobs) - 1} other run(s)" if len(jobs) > 1 else ""
            job.log(
                f"== {time.strftime('%Y-%m-%d %H:%M:%S')} {name}: {len(manifest.train)} images, "
                f"{len(manifest.classnames)} classes, device {device}{packed}"
            )
            job.log(
                f"recipe {recipe.name} ({recipe.source}{'; ' + recipe.choice if recipe.choice else ''}): "
                f"lr {recipe.lr}, batch {recipe.batch_size}, {epochs} epochs (warm-up {recipe.warmup_epochs} at "
                f"{recipe.warmup_lr}), {recipe.precision}, tests epoch {eval_epoch}"
                + (f"; set here: {', '.join(recipe.overridden)}" if recipe.overridden else "")
            )
            if job.stale:
                job.log(
                    "removed the checkpoint of an earlier run of this folder with other settings (its outputs "
                    "were gone: the job is rerun); training from scratch"
                )
            if job.done:
                job.log(f"resuming from the checkpoint after epoch {len(job.done)} of {epochs}")
            tags = {
                "method": method.name,
                "base_method": base_method(params, method.name),
                "recipe": recipe.name,
                "dataset": manifest.dataset,
                "seed": job.seed,
                "protocol": args.protocol,
                "shots": manifest.shots,
            }
            run_params = {
                "method": method.to_dict(),
                "recipe": recipe.to_dict(),
                "backbone": params["backbone"],
                "seed": job.seed,
                "manifest": str(job.manifest_path),
                "pack": len(jobs),
                "provenance": job.provenance,
                "resolved": {
                    "deterministic": job.config.deterministic,
                    "text_chunk": job.config.text_chunk,
                    "precision": job.config.precision,
                    "device": device,
                    "frozen_template": frozen_template,
                    "frozen_image_features": job.frozen_source,
                    **recipe.train_values(),
                },
            }
            job.tracked = stack.enter_context(
                tracker.run(name=name, kind="train", params=run_params, tags=tags, run_dir=job.out)
            )
            if job.done:  # the new run holds every epoch: those of the checkpoint, then its own
                job.tracked.set_tags({"resumed_from_epoch": len(job.done)})
                for record in job.done:
                    job.tracked.log_metrics(_epoch_metrics(record), step=record["epoch"])
            job.snapshot = job.out / f"prompts_epoch{eval_epoch}.safetensors"
            if not trains:
                continue
            specs.append(
                RunSpec(
                    method,
                    job.model,
                    job.cache.train_views(),
                    manifest.classnames,
                    job.config,
                    checkpoint_dir=job.out,
                    frozen_image_features=job.cache if job.frozen_source == "cache" else None,
                    backbone=backbone_id,
                    on_epoch_end=_epoch_logger(job, epochs, eval_epoch),
                    frozen_template=frozen_template,
                )
            )
        results = train_packed(specs) if trains else [TrainResult(prompts={}) for _ in jobs]
        seconds = time.perf_counter() - started
        for job, result in zip(jobs, results):
            prompts = result.prompts
            if eval_epoch != epochs:
                prompts, _ = load_prompts(job.snapshot)
            meta = {
                "method": method.name,
                "backbone": backbone,
                "pretrained": pretrained,
                "epoch": eval_epoch,
                "epochs": epochs,
                "prompts": method.to_dict()["prompts"],
                "provenance": job.provenance,
                "recipe": recipe.to_dict(),
            }
            tested = [r for r in result.history if r["epoch"] == eval_epoch and "lambda" in r]
            if tested:  # an adaptive lambda: its value after the tested epoch, for the metrics and the report
                meta["lambda"] = tested[0]["lambda"]
            save_prompts(job.out / "prompts.safetensors", prompts, meta)
            summary = run_summary(method, recipe, job.config, result, params, args, job, device, seconds, len(jobs))
            atomic_write_text(job.out / "train.json", json.dumps(summary, indent=2) + "\n")
            count = sum(v.numel() for v in prompts.values())
            job.log(f"wrote {job.out / 'prompts.safetensors'} ({count} prompt parameters)")
            for artifact in ("prompts.safetensors", "train.json", "train.log"):  # weights, config + metrics, log
                job.tracked.log_artifact(job.out / artifact)
    return 0


def _epoch_metrics(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "epoch"}


def _epoch_logger(job: _Job, epochs: int, eval_epoch: int):
    from prompt_ot.checkpoint import save_prompts

    def on_epoch_end(record: dict) -> None:
        job.tracked.log_metrics(_epoch_metrics(record), step=record["epoch"])
        job.log(
            f"epoch {record['epoch']}/{epochs}  loss {record['loss']:.4f}  ce {record['ce']:.4f}  "
            f"reg {record['regulariser']:.4f}  train acc {100 * record['train_accuracy']:.1f}%  "
            + (f"lambda {record['lambda']:.4g}  " if "lambda" in record else "")
            + f"{record['seconds']:.1f}s"
        )
        if record["epoch"] == eval_epoch and eval_epoch != epochs:
            save_prompts(job.snapshot, job.model.prompt_state(), {"epoch": eval_epoch})

    return on_epoch_end
