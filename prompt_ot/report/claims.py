"""Paired differences between methods (``tables/paired_differences``) and the paper's claims checked one by one
(``tables/claims``), from the runs' saved predictions by the bootstrap of :mod:`prompt_ot.report.paired`.

A claim that a method is better than several others (the best HM, better than either single modality, better than
both control plans) holds only where it holds against each of them: its verdict is "contradicted" when some rival is
better (that interval below 0), "supported" when every interval is above 0, else "inconclusive"; the row shows the
rival that decides it (the one with the lowest upper bound when contradicted, else the lowest lower bound). Requiring
every comparison to succeed needs no correction for multiplicity; the paired table's p-values are not corrected.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from prompt_ot.errors import UserError
from prompt_ot.report import paired
from prompt_ot.report.names import PROTOCOL_NAMES, method_name, method_order
from prompt_ot.report.render import frame_files

PAIRED_NAME = "paired_differences"
CLAIMS_NAME = "claims"
DEFAULT_REFERENCES = ("prompt_ot",)
# the methods of the paper's comparison tables (CLIP and the prompt learners it compares with)
PAPER_RIVALS = ("zeroshot", "coop", "cocoop", "kgcoop", "ivlp", "maple", "promptsrc")


@dataclass(frozen=True)
class Claim:
    key: str
    statement: str
    protocol: str
    rivals: tuple[str, ...]
    reference: str = "prompt_ot"


CLAIMS = (
    Claim("best_base2novel_hm", "Prompt-OT has the best base-to-novel HM", "base2novel", PAPER_RIVALS),
    Claim(
        "ot_beats_pointwise", "OT beats a point-wise constraint on the same features", "base2novel", ("pointwise_l1",)
    ),
    Claim(
        "both_modalities",
        "Constraining both modalities beats either alone",
        "base2novel",
        ("prompt_ot_vision", "prompt_ot_text"),
    ),
    Claim("best_cross_dataset", "Prompt-OT has the best cross-dataset target average", "cross_dataset", PAPER_RIVALS),
    Claim(
        "best_domain_generalization",
        "Prompt-OT has the best domain-generalisation target average",
        "domain_generalization",
        PAPER_RIVALS,
    ),
    Claim(
        "optimal_plan",
        "The optimal plan beats the identity and uniform plans",
        "base2novel",
        ("prompt_ot_identity_plan", "prompt_ot_uniform_plan"),
    ),
)


@dataclass
class Evidence:
    comparisons: list[paired.Comparison]
    claims: list[dict]
    skipped: list[str]  # comparisons that could not be made, with the reason
    resamples: int
    seed: int


def _groups(runs: pd.DataFrame):
    """(protocol, shots or None, runs) for each comparison group: a protocol, and each K of few-shot."""
    for protocol in paired.HEADLINE:
        part = runs[runs["protocol"] == protocol]
        if part.empty:
            continue
        if protocol == "few_shot":
            for shots in sorted(part["shots"].unique()):
                yield protocol, int(shots), part[part["shots"] == shots]
        else:
            yield protocol, None, part


def _method_runs(part: pd.DataFrame, skipped: list[str], where: str) -> dict[str, paired.MethodRuns]:
    """method -> its runs' predictions; a method with a run lacking its predictions file is left out, named."""
    out = {}
    for method, runs in part.groupby("method", sort=False):
        loaded: paired.MethodRuns = {}
        try:
            for _, run in runs.iterrows():
                sets = paired.read_predictions(run["path"])
                loaded.setdefault(run["dataset"], {})[int(run["seed"])] = sets
        except UserError as err:
            if "is missing" not in str(err):
                raise  # unreadable: bad input, said as such
            skipped.append(f"{where} {method}: {err}")
            continue
        out[method] = loaded
    return out


def _order(runs: pd.DataFrame, methods) -> list[str]:
    first = runs.drop_duplicates("method").set_index("method")
    return sorted(methods, key=lambda m: method_order(m, first.at[m, "base_method"], _weight(first.at[m, "weight"])))


def _weight(value):
    return None if pd.isna(value) else float(value)


def gather(
    runs: pd.DataFrame,
    references=DEFAULT_REFERENCES,
    resamples: int = paired.DEFAULT_RESAMPLES,
    seed: int = paired.DEFAULT_SEED,
) -> Evidence:
    """Each reference against every other method of each protocol (and K), and the claims' comparisons."""
    paired.check_settings(resamples, seed)
    comparisons, skipped, done = [], [], {}
    wanted_pairs = set()
    for claim in CLAIMS:
        wanted_pairs |= {(claim.protocol, claim.reference, rival) for rival in claim.rivals}
    for protocol, shots, part in _groups(runs):
        where = PROTOCOL_NAMES[protocol] + (f" K={shots}" if shots is not None else "")
        predictions = _method_runs(part, skipped, where)
        methods = _order(part, predictions)
        pairs = [(r, m) for r in references if r in predictions for m in methods if m != r]
        pairs += [
            (r, m) for (p, r, m) in sorted(wanted_pairs) if p == protocol and r in predictions and m in predictions
        ]
        for reference, method in dict.fromkeys(pairs):
            try:
                result = paired.compare(
                    protocol, (reference, predictions[reference]), (method, predictions[method]), shots, resamples, seed
                )
            except UserError as err:
                skipped.append(f"{where} {reference} vs {method}: {err}")
                continue
            done[(protocol, shots, reference, method)] = result
            if reference in references:
                comparisons.append(result)
        for reference in references:
            if reference not in set(part["method"]):
                skipped.append(f"{where}: reference method {reference} has no runs")
    claims = [_claim_row(claim, done, runs) for claim in CLAIMS]
    return Evidence(comparisons, claims, skipped, resamples, seed)


def _claim_row(claim: Claim, done: dict, runs: pd.DataFrame) -> dict:
    results = [done[k] for k in done if k[0] == claim.protocol and k[2] == claim.reference and k[3] in claim.rivals]
    row = {
        "claim": claim.key,
        "statement": claim.statement,
        "protocol": claim.protocol,
        "metric": paired.HEADLINE[claim.protocol],
        "reference": claim.reference,
        "rivals_run": " ".join(r.method for r in results),
        "rivals_not_run": " ".join(r for r in claim.rivals if r not in {x.method for x in results}),
    }
    if not results:
        return row | {"verdict": "not run", "decided_by": ""}
    contradicted = [r for r in results if r.verdict == "contradicted"]
    decisive = min(contradicted, key=lambda r: r.high) if contradicted else min(results, key=lambda r: r.low)
    verdict = "contradicted" if contradicted else ("supported" if all(r.low > 0 for r in results) else "inconclusive")
    return row | {
        "verdict": verdict,
        "decided_by": decisive.method,
        "reference_value": decisive.reference_value,
        "rival_value": decisive.method_value,
        "difference": decisive.difference,
        "low": decisive.low,
        "high": decisive.high,
        "p_value": decisive.p_value,
        "seeds": " ".join(map(str, decisive.seeds)),
        "datasets": " ".join(decisive.datasets),
        "resamples": decisive.resamples,
        "bootstrap_seed": decisive.seed,
    }


def _interval(low: float, high: float) -> str:
    return f"[{low:+.2f}, {high:+.2f}]"


def _method_label(method: str, runs: pd.DataFrame) -> str:
    first = runs[runs["method"] == method].head(1)
    if first.empty:
        return method_name(method)
    row = first.iloc[0]
    return method_name(method, row["base_method"], _weight(row["weight"]), adaptive=bool(row.get("adaptive", False)))


def _method_caption(evidence: Evidence) -> str:
    return (
        f"Hierarchical paired bootstrap ({evidence.resamples} resamples, random seed {evidence.seed}): seeds "
        "resampled, then within each dataset and seed the test images, stratified by class, both methods scored on "
        "the same images; 95% percentile interval; two-sided p = min(1, 2(m+1)/(R+1)), m the resamples on the far "
        "side of 0."
    )


def paired_files(evidence: Evidence, runs: pd.DataFrame) -> list[tuple[str, str]]:
    display, full = [], []
    for c in evidence.comparisons:
        label = PROTOCOL_NAMES[c.protocol]
        verdict = {"supported": "reference better", "contradicted": "reference worse"}.get(c.verdict, "not shown")
        display.append(
            {
                "Protocol": label,
                "K": "" if c.shots is None else str(c.shots),
                "Reference": _method_label(c.reference, runs),
                "Method": _method_label(c.method, runs),
                "Ref.": f"{c.reference_value:.2f}",
                "Method ": f"{c.method_value:.2f}",
                "Diff.": f"{c.difference:+.2f}",
                "95% interval": _interval(c.low, c.high),
                "p": paired.p_text(c.p_value),
                "Difference": verdict,
            }
        )
        full.append(
            {
                "protocol": c.protocol,
                "shots": c.shots,
                "metric": paired.HEADLINE[c.protocol],
                "reference": c.reference,
                "method": c.method,
                "reference_value": c.reference_value,
                "method_value": c.method_value,
                "difference": c.difference,
                "low": c.low,
                "high": c.high,
                "p_value": c.p_value,
                "seeds": " ".join(map(str, c.seeds)),
                "datasets": " ".join(c.datasets),
                "resamples": c.resamples,
                "bootstrap_seed": c.seed,
                "notes": " ".join(c.notes),
            }
        )
    caption = (
        "Paired differences (reference minus method) in each protocol's headline metric: HM of the average base and "
        "novel accuracy (base-to-novel), average target accuracy (cross-dataset, domain generalisation), average "
        "accuracy per K (few-shot), in points. " + _method_caption(evidence) + " p-values are not corrected for the "
        "number of comparisons."
    )
    if evidence.skipped:
        caption += " Not compared: " + "; ".join(evidence.skipped) + "."
    return frame_files(PAIRED_NAME, caption, pd.DataFrame(display), pd.DataFrame(full), 4)


def claims_files(evidence: Evidence, runs: pd.DataFrame) -> list[tuple[str, str]]:
    display = []
    for row in evidence.claims:
        compared = _method_label(row["reference"], runs)
        if row["decided_by"]:
            n = len(row["rivals_run"].split())
            rival = _method_label(row["decided_by"], runs)
            compared += f" vs {rival}" + (f" (decisive of {n})" if n > 1 else "")
        numbers = "difference" in row
        display.append(
            {
                "Claim": row["statement"],
                "Metric": row["metric"],
                "Compared": compared,
                "Diff.": f"{row['difference']:+.2f}" if numbers else "–",
                "95% interval": _interval(row["low"], row["high"]) if numbers else "–",
                "p": paired.p_text(row["p_value"]) if numbers else "–",
                "Verdict": row["verdict"],
            }
        )
    caption = (
        "The paper's claims, checked on these runs: supported (95% interval of the difference above 0 against every "
        "rival), contradicted (below 0 against some rival) or inconclusive at this scale; a claim against several "
        "rivals shows the one that decides it. " + _method_caption(evidence) + " A verdict holds for these "
        "datasets, seeds, backbone and recipe only."
    )
    not_run = [f"{r['claim']}: {r['rivals_not_run']}" for r in evidence.claims if r["rivals_not_run"]]
    if not_run:
        caption += " Rivals not run: " + "; ".join(not_run) + "."
    return frame_files(CLAIMS_NAME, caption, pd.DataFrame(display), pd.DataFrame(evidence.claims), 3)
