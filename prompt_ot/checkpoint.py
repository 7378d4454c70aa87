"""Training checkpoints: one safetensors file, written atomically each epoch, loaded without running code.

It holds the trainable prompts, the optimiser's momentum buffers, the RNG state, the epoch and the
per-epoch history, the running sum of prompt aggregation (PromptSRC's GPA) where the method has one, the
regulariser's adaptive state (lambda and its budget's reference) where it has one, plus a fingerprint of
(method, recipe, classes, backbone) so that a checkpoint from another run is refused rather than silently resumed.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from prompt_ot.errors import UserError
from prompt_ot.utils.io import atomic_path

FORMAT = "prompt_ot.checkpoint/2"


def _save_canonical(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str]) -> None:
    """``safetensors.torch.save_file``, then the JSON header rewritten with sorted keys.

    safetensors writes the metadata in hash-map order, which differs between processes, so two identical
    runs would write different bytes (and DVC would see changed outputs). Sorting keys never lengthens the
    compact header; it is padded with spaces to its old length, so the tensor offsets stay valid.
    """
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    with open(path, "r+b") as fh:
        size = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(size))
        canonical = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        if len(canonical) <= size:
            fh.seek(8)
            fh.write(canonical.ljust(size, b" "))


def save_prompts(path: str | Path, prompts: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """Final trained prompts only (what evaluation loads), atomically."""
    meta = {"format": "prompt_ot.prompts/1", **{k: json.dumps(v) for k, v in (metadata or {}).items()}}
    with atomic_path(path) as tmp:
        _save_canonical({k: v.detach().cpu().contiguous() for k, v in prompts.items()}, tmp, meta)


def load_prompts(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"prompt weights {path} do not exist; run the train stage first")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as err:  # safetensors raises its own error types for a damaged header
        raise UserError(f"prompt weights {path} are damaged or not a safetensors file ({err}); retrain") from err
    if meta.get("format") != "prompt_ot.prompts/1":
        raise UserError(f"{path} is not a prompt_ot prompts file")
    return tensors, {k: json.loads(v) for k, v in meta.items() if k != "format"}


def save_checkpoint(
    path,
    model,
    optimizer,
    epoch: int,
    history: list[dict],
    fingerprint: str,
    aggregate: dict[str, torch.Tensor] | None = None,
    regulariser: dict[str, torch.Tensor] | None = None,
) -> None:
    """``aggregate``: the running weighted sum of prompt aggregation (PromptSRC's GPA), when the method has one;
    ``regulariser``: the regulariser's adaptive state (an adaptive lambda's value and reference), when it has one."""
    tensors = {f"prompt/{k}": v.cpu().contiguous() for k, v in model.prompt_state().items()}
    tensors |= {f"aggregate/{k}": v.detach().cpu().contiguous() for k, v in (aggregate or {}).items()}
    tensors |= {f"regulariser/{k}": v.detach().cpu().contiguous() for k, v in (regulariser or {}).items()}
    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    for group in optimizer.param_groups:
        for p in group["params"]:
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                tensors[f"momentum/{names[id(p)]}"] = buf.detach().cpu().contiguous()
    tensors["rng/torch_cpu"] = torch.get_rng_state()
    meta = {
        "format": FORMAT,
        "epoch": str(epoch),
        "fingerprint": fingerprint,
        "history": json.dumps(history),
    }
    with atomic_path(path) as tmp:
        _save_canonical(tensors, tmp, meta)


def _check_meta(path, meta: dict, fingerprint: str) -> None:
    if meta.get("format") != FORMAT:
        if str(meta.get("format", "")).startswith("prompt_ot.checkpoint/"):
            raise UserError(
                f"checkpoint {path} has format {meta['format']}, this version reads {FORMAT}; delete it "
                "to restart the run"
            )
        raise UserError(f"{path} is not a prompt_ot training checkpoint; delete it to restart the run")
    if meta.get("fingerprint") != fingerprint:
        raise UserError(
            f"checkpoint {path} belongs to another run (method, recipe, classes or backbone differ); "
            "use another output folder or delete the checkpoint to restart"
        )


def _header(path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return fh.metadata() or {}


def written_by_another_run(path, fingerprint: str) -> bool:
    """True for a readable training checkpoint (any format version) whose fingerprint is not ``fingerprint``;
    False for a missing, damaged or foreign file (``check_resumable`` says what is wrong with those)."""
    try:
        meta = _header(path)
    except Exception:  # noqa: BLE001 - missing or damaged
        return False
    return str(meta.get("format", "")).startswith("prompt_ot.checkpoint/") and meta.get("fingerprint") != fingerprint


def check_resumable(path, fingerprint: str) -> list[dict]:
    """Refuse, before anything is written, a run folder whose checkpoint belongs to another run (or is damaged).

    Reads the header only; a missing checkpoint is fine (a fresh run). Call it before opening the run's
    tracking record or log, so that a refused run changes nothing in the folder. Returns the per-epoch
    history of the epochs the checkpoint has completed (empty for a fresh run).
    """
    if not Path(path).exists():
        return []
    try:
        meta = _header(path)
        _check_meta(path, meta, fingerprint)
        return json.loads(meta["history"])
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"checkpoint {path} is damaged ({err}); delete it to restart the run from scratch") from err


def load_checkpoint(
    path,
    model,
    optimizer,
    fingerprint: str,
    aggregate: dict[str, torch.Tensor] | None = None,
    regulariser: dict[str, torch.Tensor] | None = None,
) -> tuple[int, list[dict]]:
    """Restore state in place; returns (epochs completed, history). ``aggregate`` (a dict) receives the
    running sum of prompt aggregation, ``regulariser`` (a dict) the regulariser's adaptive state, when the
    checkpoint holds them."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as err:
        raise UserError(f"checkpoint {path} is damaged ({err}); delete it to restart the run from scratch") from err
    _check_meta(path, meta, fingerprint)
    model.load_prompt_state({k[len("prompt/") :]: v for k, v in tensors.items() if k.startswith("prompt/")})
    params = dict(model.named_parameters())
    for key, value in tensors.items():
        if key.startswith("momentum/"):
            p = params[key[len("momentum/") :]]
            optimizer.state[p]["momentum_buffer"] = value.to(p.device, p.dtype)
    torch.set_rng_state(tensors["rng/torch_cpu"])
    if aggregate is not None:
        aggregate.update({k[len("aggregate/") :]: v for k, v in tensors.items() if k.startswith("aggregate/")})
    if regulariser is not None:
        regulariser.update({k[len("regulariser/") :]: v for k, v in tensors.items() if k.startswith("regulariser/")})
    return int(meta["epoch"]), json.loads(meta["history"])
