"""Benchmark: the OT solvers' cost per solve for batch sizes 4 to 256, exact and entropic, CPU and GPU.

For each batch size B it builds the regulariser's cost, a square B x B joint-feature cost
C_ij = eta * ||u_i - v_j||^2 (eta 0.5) between random rows u, v that are each an image half and a text
half of 512 unit-norm dimensions (float32, as in training), on each device: the CPU, and the GPU when
``torch.cuda.is_available()``. It then times, per solve (median over repeats, after warm-up):

- the reference code's way: ``ot.emd`` on a NumPy float64 copy of C, the plan copied back;
- this project's POT backend, ``transport_plan(C, solver, backend="pot")``: ``ot.emd`` (exact),
  ``ot.sinkhorn(method="sinkhorn_log")`` (entropic) and POT's unbalanced Sinkhorn, on a float64 CPU copy;
- this project's device solvers, ``transport_plan(C, solver, backend="torch")``, on C's own device
  (exact: enumeration of the B! assignments for B <= 8, POT on the CPU above that; entropic and
  unbalanced: fixed-iteration log-domain Sinkhorn in torch),

and reports max |P_torch - P_POT| so the tables show that both backends give the same plan. On the GPU
each timed solve ends with ``torch.cuda.synchronize()``; the torch backend is also timed "queued"
(many solves, one synchronisation, per solve) and checked for host synchronisation with
``torch.cuda.set_sync_debug_mode("error")``. Writes reports/perf/ot_solvers.md.

    python bench/bench_ot.py [--quick] [--batch-sizes 4 8 16 32 64 128 256] [--repeats 30]
"""

from __future__ import annotations

import argparse
import inspect
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import ot
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine_info  # noqa: E402

import prompt_ot.losses.ot as ot_module  # noqa: E402
from prompt_ot.losses.ot import DEFAULT_REG, DEFAULT_REG_M, transport_cost, transport_plan  # noqa: E402

BATCH_SIZES = [4, 8, 16, 32, 64, 128, 256]
HALF_DIM = 512  # image half and text half of a joint row
ETA = 0.5
SOLVERS = ("exact", "sinkhorn", "unbalanced")
HAS_TORCH_BACKEND = "backend" in inspect.signature(transport_plan).parameters
# the torch backend's exact solver enumerates assignments up to this B and hands larger ones to POT
MAX_ENUMERATED = getattr(ot_module, "MAX_ENUMERATED_BATCH", None)
DEVICE_ITERATIONS = getattr(ot_module, "DEFAULT_DEVICE_ITERATIONS", None)


def joint_rows(batch: int, generator: torch.Generator) -> torch.Tensor:
    """(B, 2 x 512): a unit image half and a unit text half per row, like the regulariser's joint rows."""
    halves = torch.randn(batch, 2, HALF_DIM, generator=generator)
    halves = halves / halves.norm(dim=-1, keepdim=True)
    return halves.reshape(batch, 2 * HALF_DIM)


def reference_emd(cost: torch.Tensor) -> torch.Tensor:
    """The reference code's exact plan: a NumPy float64 copy on the host, ``ot.emd``, the plan sent back."""
    matrix = cost.detach().cpu().numpy().astype(np.float64)
    n_rows, n_cols = matrix.shape
    plan = ot.emd(np.full(n_rows, 1.0 / n_rows), np.full(n_cols, 1.0 / n_cols), matrix)
    return torch.from_numpy(plan).to(device=cost.device, dtype=cost.dtype)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_solve(fn, device: torch.device, warmup: int, repeats: int, budget_s: float) -> tuple[float, int, object]:
    """Median seconds per call of ``fn()`` (synchronised), after ``warmup`` calls; fewer repeats
    (at least 3) when one call is slow, so a cell takes about ``budget_s``."""
    result = None
    for _ in range(warmup):
        result = fn()
    synchronize(device)
    times = []
    while len(times) < repeats:
        start = time.perf_counter()
        result = fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
        if len(times) >= 3 and sum(times) > budget_s:
            break
    return float(np.median(times)), len(times), result


def time_queued(fn, device: torch.device, calls: int) -> float:
    """Seconds per call when ``calls`` solves are queued and synchronised once (the training-step case)."""
    fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / calls


def host_syncs(fn, device: torch.device) -> str:
    """'none' when ``fn`` runs under ``set_sync_debug_mode("error")`` without raising, else 'yes'."""
    if device.type != "cuda":
        return "n/a"
    synchronize(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
        verdict = "none"
    except RuntimeError:
        verdict = "yes"
    finally:
        torch.cuda.set_sync_debug_mode(0)
    synchronize(device)
    return verdict


def bench_device(
    device: torch.device, batch_sizes: list[int], warmup: int, repeats: int, budget_s: float, queued_calls: int
) -> list[dict]:
    rows = []
    for batch in batch_sizes:
        generator = torch.Generator().manual_seed(batch)
        cost = transport_cost(joint_rows(batch, generator), joint_rows(batch, generator), ETA).to(device)
        row: dict = {"device": str(device), "batch": batch}

        seconds, n, ref_plan = time_solve(lambda: reference_emd(cost), device, warmup, repeats, budget_s)
        row["reference_emd_numpy"] = {"us": round(1e6 * seconds, 1), "repeats": n}
        pot_plans = {}
        for solver in SOLVERS:
            kwargs = {"backend": "pot"} if HAS_TORCH_BACKEND else {}
            seconds, n, plan = time_solve(
                lambda: transport_plan(cost, solver, **kwargs), device, warmup, repeats, budget_s
            )
            pot_plans[solver] = plan.double().cpu()
            row[f"pot_{solver}"] = {
                "us": round(1e6 * seconds, 1),
                "repeats": n,
                "plan_mass": round(float(plan.sum()), 6),
            }
        row["reference_vs_pot_exact_max_abs"] = float((ref_plan.double().cpu() - pot_plans["exact"]).abs().max())
        if HAS_TORCH_BACKEND:
            cost64 = cost.double()  # plans compared in float64, below float32's resolution of 1/B
            for solver in SOLVERS:

                def solve():
                    return transport_plan(cost, solver, backend="torch")

                seconds, n, plan = time_solve(solve, device, warmup, repeats, budget_s)
                diff = (
                    (
                        transport_plan(cost64, solver, backend="torch").cpu()
                        - transport_plan(cost64, solver, backend="pot").cpu()
                    )
                    .abs()
                    .max()
                )
                entry = {
                    "us": round(1e6 * seconds, 1),
                    "repeats": n,
                    "plan_max_abs_diff_vs_pot": float(diff),
                    "float32_plan_max_abs_diff_vs_pot": float((plan.double().cpu() - pot_plans[solver]).abs().max()),
                    "plan_mass": round(float(plan.sum()), 6),
                }
                if solver == "exact" and MAX_ENUMERATED is not None and batch > MAX_ENUMERATED:
                    entry["pot_fallback"] = True
                if device.type == "cuda":
                    entry["queued_us"] = round(1e6 * time_queued(solve, device, queued_calls), 1)
                    entry["host_sync"] = host_syncs(solve, device)
                row[f"torch_{solver}"] = entry
        rows.append(row)
        summary = ", ".join(f"{key} {value['us']:.0f} us" for key, value in row.items() if isinstance(value, dict))
        print(f"{device} B={batch}: {summary}", flush=True)
    return rows


def fmt_time(us: float | None) -> str:
    if us is None:
        return "–"
    if us < 1000:
        return f"{us:.0f} µs"
    if us < 1e6:
        return f"{us / 1000:.2f} ms"
    return f"{us / 1e6:.2f} s"


def fmt_diff(value: float | None) -> str:
    return "–" if value is None else f"{value:.1e}"


def tables(rows: list[dict]) -> str:
    """One exact table and one entropic table per device."""
    out = []
    for device in dict.fromkeys(r["device"] for r in rows):
        dev_rows = [r for r in rows if r["device"] == device]
        gpu = device.startswith("cuda")
        where = "GPU" if gpu else "CPU"
        queued_head = " | torch queued | host sync" if gpu else ""
        queued_rule = "|---:|:--" if gpu else ""

        def torch_cells(r, solver):
            t = r.get(f"torch_{solver}")
            if t is None:
                return ["–", "–"] + (["–", "–"] if gpu else [])
            cells = [
                fmt_time(t["us"]) + (" (POT)" if t.get("pot_fallback") else ""),
                fmt_diff(t["plan_max_abs_diff_vs_pot"]),
            ]
            if gpu:
                cells += [fmt_time(t.get("queued_us")), t.get("host_sync", "–")]
            return cells

        out.append(f"### Exact OT, cost on the {where} ({device})\n")
        out.append(
            '| B | POT `ot.emd`, NumPy copy (reference) | `backend="pot"` | `backend="torch"` | '
            f"max abs(P_torch − P_POT){queued_head} |"
        )
        out.append(f"|---:|---:|---:|---:|---:{queued_rule}|")
        for r in dev_rows:
            cells = [
                str(r["batch"]),
                fmt_time(r["reference_emd_numpy"]["us"]),
                fmt_time(r["pot_exact"]["us"]),
                *torch_cells(r, "exact"),
            ]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
        out.append(
            f"### Entropic OT (reg {DEFAULT_REG}) and unbalanced OT (reg {DEFAULT_REG}, reg_m {DEFAULT_REG_M}), "
            f"cost on the {where} ({device})\n"
        )
        q2 = " | torch queued | host sync" if gpu else ""
        out.append(
            f"| B | POT `sinkhorn_log` | torch Sinkhorn | max abs(ΔP){q2} | POT unbalanced | torch unbalanced "
            f"| max abs(ΔP){q2} |"
        )
        out.append(f"|---:|---:|---:|---:{queued_rule}|---:|---:|---:{queued_rule}|")
        for r in dev_rows:
            sink = torch_cells(r, "sinkhorn")
            unb = torch_cells(r, "unbalanced")
            cells = [
                str(r["batch"]),
                fmt_time(r["pot_sinkhorn"]["us"]),
                *sink[:1],
                sink[1],
                *sink[2:],
                fmt_time(r["pot_unbalanced"]["us"]),
                unb[0],
                unb[1],
                *unb[2:],
            ]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def report(result: dict) -> str:
    m = result["machine"]
    gpu_line = (
        f"GPU: {m['gpu']}."
        if m["gpu"]
        else "GPU: none (`torch.cuda.is_available()` is False), so only the CPU tables are here; on a machine "
        "with CUDA the same command adds the GPU tables."
    )
    torch_note = (
        ""
        if result["torch_backend"]
        else "\n**`transport_plan` has no `backend=` argument in this checkout: the torch columns are empty.**\n"
    )
    return f"""# OT solvers: cost per solve for batch sizes {result["batch_sizes"][0]} to {result["batch_sizes"][-1]}

Command: `{result["command"]}`

Date: {m["date"]}. Machine: {m["cpu"]}, {m["cores"]} cores ({m["platform"]}), Python {m["python"]},
torch {m["torch"]} ({m["torch_threads"]} CPU thread(s), `--threads`), POT {m["pot"]}, NumPy {m["numpy"]}. {gpu_line}
Load average {m["load_average_at_start"][0]} at start: a 2-core machine shared with other agents'
test runs, so absolute times carry that contention; the columns of one row are measured in the same
run, one right after the other, so their ratios are less affected than the absolute figures. torch
runs with {m["torch_threads"]} CPU thread(s) (`--threads`; one is what every pipeline job uses): in trial runs with
two threads on this busy machine, each small parallel op could wait for a descheduled core and the
torch-side times were erratic and many times slower.
{torch_note}
Cost: square B x B, C_ij = {ETA} · ||u_i − v_j||², u and v random joint rows (a unit image half and a
unit text half of {HALF_DIM} dimensions each), float32 on the device named in each table, built once
per B (not timed). Each figure is the median wall time of one solve, from the cost on its device to
the plan on that device (host copies included), over up to {result["repeats"]} repeats after
{result["warmup"]} warm-up solves (fewer repeats, at least 3, where one solve takes long: about
{result["budget_s"]} s per cell; the JSON below lists the repeats of each cell).
The reference column is the released code's way: `ot.emd` on a NumPy float64 copy. `backend="pot"`
is `transport_plan(cost, solver, backend="pot")` (float64 CPU copy through POT: `ot.emd`,
`ot.sinkhorn(method="sinkhorn_log")` to stopThr 1e-6, POT's unbalanced Sinkhorn); `backend="torch"`
solves on the cost's device (exact by enumerating the B! assignments for B <= {result["max_enumerated"]}, and
by POT on the CPU above that, marked "(POT)"; {result["device_iterations"]} log-domain Sinkhorn iterations, with no
convergence test, for the entropic solvers). max abs(ΔP) is the largest entry of |P_torch − P_POT| for
the same solver and cost, both solved from a float64 copy of the cost (uniform marginals, so plan
entries are at most 1/B; the JSON also gives the float32 plans' difference).
On the GPU, "queued" is the time per solve when {result["queued_calls"]} solves are issued and
synchronised once, and "host sync" says whether one solve raised under
`torch.cuda.set_sync_debug_mode("error")`.

{tables(result["rows"])}
```json
{json.dumps(result, indent=1)}
```
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repeats (a smoke run of the benchmark)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=BATCH_SIZES)
    parser.add_argument("--repeats", type=int, default=None, help="timed solves per cell (default 30; --quick 5)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed solves first (default 3; --quick 1)")
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds per cell after which no more repeats start (default 3; --quick 0.5)",
    )
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, plus cuda when available")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1, as every pipeline job: on a busy machine a second "
        "thread makes each small parallel op wait for a descheduled core)",
    )
    parser.add_argument("--out", default="reports/perf/ot_solvers.md")
    args = parser.parse_args(argv)
    repeats = args.repeats or (5 if args.quick else 30)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    budget = args.budget or (0.5 if args.quick else 3.0)
    queued_calls = 10 if args.quick else 50
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])

    torch.set_num_threads(args.threads)
    machine = machine_info()
    print(
        f"{machine['date']}: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, "
        f"POT {machine['pot']}, GPU {machine['gpu'] or 'none'}, load {machine['load_average_at_start'][0]}",
        flush=True,
    )
    if not HAS_TORCH_BACKEND:
        print("transport_plan has no backend= argument here: timing the POT solvers only", flush=True)
    rows = []
    for device in devices:
        rows += bench_device(torch.device(device), args.batch_sizes, warmup, repeats, budget, queued_calls)
    result = {
        "command": f"python bench/bench_ot.py {shlex.join(sys.argv[1:] if argv is None else argv)}".strip(),
        "batch_sizes": args.batch_sizes,
        "repeats": repeats,
        "warmup": warmup,
        "budget_s": budget,
        "queued_calls": queued_calls,
        "eta": ETA,
        "reg": DEFAULT_REG,
        "reg_m": DEFAULT_REG_M,
        "torch_backend": HAS_TORCH_BACKEND,
        "max_enumerated": MAX_ENUMERATED,
        "device_iterations": DEVICE_ITERATIONS,
        "machine": machine,
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report(result))
    print(tables(rows))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
