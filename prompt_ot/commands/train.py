"""`python -m prompt_ot train`: train one method's prompts on one few-shot manifest, from its feature cache.

Inputs are explicit: the params file (backbone, recipe, variants), the manifest and the train cache (image
store plus the frozen features of every training view). Outputs go to ``--out``: ``prompts.safetensors``
(the epoch that evaluation uses), ``train.json`` (per-epoch metrics and the resolved configuration) and
``checkpoint.safetensors`` (rewritten every epoch; an interrupted job resumes from it). Every run is
also an MLflow run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml", help="experiment parameters (default: params.yaml)")
    parser.add_argument("--protocol", required=True, choices=["base2novel", "cross_dataset", "few_shot"])
    parser.add_argument("--method", required=True, help="a method of the registry or a variant from params.yaml")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--manifest", required=True, help="few-shot manifest written by 'split'")
    parser.add_argument("--train-cache", required=True, help="train cache written by 'cache train'")
    parser.add_argument("--out", required=True, help="run folder for prompts, metrics and checkpoint")
    parser.add_argument("--device", default="auto", help="auto (a free GPU, else the CPU), cpu, cuda:N")


def run_summary(method, config, result, params, args, device: str, seconds: float, eval_epoch: int) -> dict:
    from dataclasses import asdict

    return {
        "protocol": args.protocol, "method": method.name, "seed": args.seed, "manifest": str(args.manifest),
        "backbone": params["backbone"], "method_config": method.to_dict(),
        "train_config": asdict(config) | {"device": device}, "eval_epoch": eval_epoch,
        "resumed_from_epoch": result.resumed_from_epoch, "history": result.history, "seconds": seconds,
    }


def run(args) -> int:
    from prompt_ot.cache import FrozenViewFeatures
    from prompt_ot.checkpoint import save_prompts
    from prompt_ot.config import base_method, load_params, resolve_method, train_config
    from prompt_ot.data.fewshot import read_manifest
    from prompt_ot.devices import pick_device
    from prompt_ot.methods import build_model
    from prompt_ot.models.backbone import load_backbone
    from prompt_ot.tracking import tracker_for
    from prompt_ot.train import train
    from prompt_ot.utils.io import atomic_write_text

    params = load_params(args.params)
    method = resolve_method(params, args.method)
    manifest = read_manifest(args.manifest)
    backbone, pretrained = params["backbone"]["name"], params["backbone"]["pretrained"]
    epochs = params["train"]["epochs"]
    eval_epoch = params["train"].get("eval_epoch", 0) or epochs
    cache = FrozenViewFeatures(args.train_cache, seed=args.seed, epochs=epochs, backbone=backbone)
    device = pick_device(args.device)
    config = train_config(params, args.seed, device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_file = open(out / "train.log", "a")

    def log(line: str) -> None:
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    clip, tokenizer, _ = load_backbone(backbone, pretrained)
    model = build_model(method, clip, tokenizer, seed=args.seed)
    name = f"train/{args.protocol}/{method.name}/{manifest.dataset}_{manifest.shots}shot/seed{args.seed}"
    log(f"{name}: {len(manifest.train)} images, {len(manifest.classnames)} classes, device {device}")
    tracker = tracker_for(params, args.params)
    tags = {"method": method.name, "base_method": base_method(params, method.name),
            "dataset": manifest.dataset, "seed": args.seed, "protocol": args.protocol, "shots": manifest.shots}
    run_params = {"method": method.to_dict(), "train": params["train"], "backbone": params["backbone"],
                  "seed": args.seed, "manifest": str(args.manifest)}
    started = time.perf_counter()
    snapshot = out / f"prompts_epoch{eval_epoch}.safetensors"
    with tracker.run(name=name, kind="train", params=run_params, tags=tags, run_dir=out) as tracked:

        def on_epoch_end(record: dict) -> None:
            tracked.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=record["epoch"])
            log(f"epoch {record['epoch']}/{epochs}  loss {record['loss']:.4f}  ce {record['ce']:.4f}  "
                f"reg {record['regulariser']:.4f}  train acc {100 * record['train_accuracy']:.1f}%  "
                f"{record['seconds']:.1f}s")
            if record["epoch"] == eval_epoch and eval_epoch != epochs:
                save_prompts(snapshot, model.prompt_state(), {"epoch": eval_epoch})

        needs_frozen = method.regulariser is not None
        result = train(method, model, cache.train_views(), manifest.classnames, config, checkpoint_dir=out,
                       frozen_image_features=cache if needs_frozen else None, backbone=f"{backbone}:{pretrained}",
                       on_epoch_end=on_epoch_end)
        prompts = result.prompts
        if eval_epoch != epochs:
            from prompt_ot.checkpoint import load_prompts

            prompts, _ = load_prompts(snapshot)
        save_prompts(out / "prompts.safetensors", prompts,
                     {"method": method.name, "backbone": backbone, "pretrained": pretrained, "epoch": eval_epoch,
                      "prompts": method.to_dict()["prompts"]})
        summary = run_summary(method, config, result, params, args, device, time.perf_counter() - started, eval_epoch)
        atomic_write_text(out / "train.json", json.dumps(summary, indent=2) + "\n")
        log(f"wrote {out / 'prompts.safetensors'} ({sum(v.numel() for v in prompts.values())} prompt parameters)")
        log_file.close()
        for artifact in ("prompts.safetensors", "train.json", "train.log"):  # weights, resolved config + metrics, log
            tracked.log_artifact(out / artifact)
    return 0
