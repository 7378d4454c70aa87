"""``HostReads``: what a training step would make a GPU wait for, recorded on the CPU."""

from __future__ import annotations

import torch


class HostReads:
    """Records the tensor operations that read device values on the host, as CUDA's sync debug mode would.

    Inside ``with HostReads() as reads:`` every ``.item()``/``int()``/``bool()``/``.tolist()`` of a tensor,
    every data-dependent shape (``nonzero``, ``masked_select``, ``unique``, boolean-mask indexing, indexing
    with a 0-dim tensor) and every tensor made from host data straight onto a device
    (``torch.tensor(data, device=...)``: a blocking host-to-device copy on a GPU) is recorded in
    ``reads.found`` with the line of this project (or of the library it called) that caused it. On a GPU
    each of these waits for the device; on the CPU it runs as usual, so a CPU test can show that a step
    would not wait. Copies written as ``.to(device)`` cannot be seen on the CPU (they are no-ops there).
    """

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        aten = torch.ops.aten
        reads = {
            aten._local_scalar_dense.default,
            aten.nonzero.default,
            aten.masked_select.default,
            aten._unique2.default,
            aten.unique_consecutive.default,
            aten.unique_dim.default,
            aten.repeat_interleave.Tensor,
        }
        masked = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default}
        found = self.found = []

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                boolean_index = func in masked and any(
                    isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
                    for i in args[1]
                    if i is not None
                )
                if func in reads or boolean_index:
                    found.append(f"{func} at {_project_caller()}")
                return func(*args, **(kwargs or {}))

        self._mode = Mode()

        def onto_device(make):
            def made(data, *args, **kwargs):
                if kwargs.get("device") is not None and not isinstance(data, torch.Tensor):
                    found.append(f"torch.{make.__name__}(host data, device=...) at {_project_caller()}")
                return make(data, *args, **kwargs)

            return made

        self._makers = {name: onto_device(getattr(torch, name)) for name in ("tensor", "as_tensor")}

    def __enter__(self):
        self._saved = {name: getattr(torch, name) for name in self._makers}
        for name, made in self._makers.items():
            setattr(torch, name, made)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        try:
            return self._mode.__exit__(*exc)
        finally:
            for name, make in self._saved.items():
                setattr(torch, name, make)


def _project_caller() -> str:
    """The innermost frame of this project's package on the current stack, and the library frame it called."""
    import traceback
    from pathlib import Path

    package = str(Path(__file__).resolve().parents[2] / "prompt_ot")
    stack = traceback.extract_stack()
    for k in range(len(stack) - 1, -1, -1):
        frame = stack[k]
        if frame.filename.startswith(package):
            where = f"{Path(frame.filename).name}:{frame.lineno} {frame.line}"
            inner = stack[k + 1] if k + 1 < len(stack) else None
            if inner is not None and not inner.filename.startswith(str(Path(__file__).parents[1])):
                where += f" -> {Path(inner.filename).name}:{inner.lineno}"
            return where
    return "outside prompt_ot"
