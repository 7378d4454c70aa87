"""`python -m prompt_ot backbone`: make the backbone's weights available once, before the fan-out.

With a ``pretrain`` block in the params (the offline demo), train the small CLIP from scratch on the
named datasets and write ``<out>/<backbone>.safetensors``, the file ``backbone.pretrained`` points at;
a second run with the same settings does nothing. Otherwise resolve ``backbone.pretrained`` (an
open_clip tag, fetched into the Hugging Face cache if it is not there yet, or a local file) and record
which weights file every later stage will load. Either way ``<out>/backbone.json`` says what was done.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from prompt_ot.utils import args as check


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml")
    check.backbone_key_option(parser)
    parser.add_argument(
        "--root", default="data", type=check.dir_path, help="data root (pretraining reads the demo datasets there)"
    )
    parser.add_argument(
        "--out", required=True, type=check.out_dir, help="folder for backbone.json (and the pretrained checkpoint)"
    )


def run(args) -> int:
    from prompt_ot.config import load_params, select_backbone
    from prompt_ot.errors import UserError
    from prompt_ot.utils.io import atomic_write_text

    params = select_backbone(load_params(args.params), args.backbone_key, args.params)
    name, pretrained = params["backbone"]["name"], params["backbone"]["pretrained"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record_path = out / "backbone.json"
    if not params.get("pretrain"):
        from prompt_ot.models.backbone import resolve_weights

        weights = resolve_weights(name, pretrained)
        record = {"backbone": name, "pretrained": pretrained, "weights": weights, "pretrained_here": False}
        atomic_write_text(record_path, json.dumps(record, indent=2) + "\n")
        print(f"{name}: weights {weights or 'random (seeded)'}")
        return 0

    from prompt_ot.pretrain import PretrainConfig

    config = PretrainConfig.from_params(params["pretrain"])
    checkpoint = out / f"{name}.safetensors"
    if Path(pretrained).resolve() != checkpoint.resolve():
        raise UserError(
            f"backbone.pretrained = {pretrained!r} must name the file this stage writes, {checkpoint}, "
            "when the params have a pretrain block"
        )
    fingerprint = config.fingerprint(name)
    if record_path.exists() and checkpoint.exists():
        previous = json.loads(record_path.read_text())
        if previous.get("fingerprint") == fingerprint:
            print(
                f"{checkpoint} is already pretrained with these settings; nothing to do "
                f"(zero-shot accuracy: {previous['zero_shot_accuracy']})"
            )
            return 0
    from safetensors.torch import save_file

    from prompt_ot.pretrain import pretrain
    from prompt_ot.utils.io import atomic_path

    state, report = pretrain(name, config, args.root, out / "work", log=lambda line: print(line, flush=True))
    with atomic_path(checkpoint) as tmp:
        save_file(state, str(tmp))
    record = {
        "backbone": name,
        "pretrained": pretrained,
        "weights": str(checkpoint),
        "pretrained_here": True,
        "fingerprint": fingerprint,
        **report,
    }
    atomic_write_text(record_path, json.dumps(record, indent=2) + "\n")
    import shutil

    shutil.rmtree(out / "work", ignore_errors=True)
    print(f"wrote {checkpoint} ({report['seconds']:.0f}s)")
    return 0
