"""What ``arrcoc bench tokens`` writes: ``tokens.json`` (every number), ``tokens.md`` (the tables, read) and
``pareto.png`` (accuracy against mean visual tokens), aggregated from the per-sample records of
:class:`~arrcoc.bench.tokens.TokenBench`.

Accuracies are means of per-sample VQA soft accuracy with their standard error (sample standard deviation over
the square root of the count). Object recall is pooled over samples: kept patches of the named objects over all
named-object patches.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from arrcoc.bench.budgets import smallest_sufficient_k, spearman
from arrcoc.processing.files import atomic_path, write_text

#: where a method's line goes in the tables (others follow, sorted)
ORDER = ("full_trained", "full", "adaptive", "fixed", "random", "grid", "pool", "cls_attention", "diversity",
         "question_blind", "swapped_selection", "shuffled")


def _mean_se(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return statistics.fmean(values), se


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _target_key(target: str) -> float:
    return -1.0 if target == "head" else float(target)


def methods_table(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """{method: [{target, mean_tokens, accuracy, stderr, by_type}]}, points in target order."""
    points: dict[str, dict[str, list[tuple[int, float, str]]]] = defaultdict(lambda: defaultdict(list))
    for rec in records:
        for key, (tokens, acc) in rec["methods"].items():
            name, _, target = key.rpartition("@")
            points[name][target].append((tokens, acc, rec["type"]))
    out = {}
    for name, by_target in points.items():
        rows = []
        for target in sorted(by_target, key=_target_key):
            items = by_target[target]
            acc, se = _mean_se([a for _, a, _ in items])
            by_type: dict[str, list[float]] = defaultdict(list)
            for _, a, t in items:
                by_type[t].append(a)
            rows.append({"target": target, "mean_tokens": statistics.fmean(t for t, _, _ in items), "accuracy": acc,
                         "stderr": se, "samples": len(items),
                         "by_type": {t: statistics.fmean(v) for t, v in sorted(by_type.items())}})
        out[name] = rows
    return dict(sorted(out.items(), key=lambda kv: (ORDER.index(kv[0]) if kv[0] in ORDER else len(ORDER), kv[0])))


def question_use(records: list[dict[str, Any]]) -> dict[str, dict[str, float]] | None:
    """{k: {recall_named, recall_other, recall_swapped}} pooled over samples with object locations."""
    with_objects = [r["recall"] for r in records if r.get("recall")]
    if not with_objects:
        return None
    out = {}
    for label in (k for k in with_objects[0] if k not in ("objects", "methods")):
        tot = [sum(r[label][j] for r in with_objects) for j in range(5)]
        out[label] = {"recall_named": tot[1] / tot[0] if tot[0] else math.nan,
                      "recall_other": tot[3] / tot[2] if tot[2] else math.nan,
                      "recall_swapped": tot[4] / tot[0] if tot[0] else math.nan}
    return out


def method_recall(records: list[dict[str, Any]], which: int = 0) -> dict[str, float]:
    """Each selection method's recall at the head's budgets: of the named objects' patches (``which=0``) or of the
    other objects' (``which=1``)."""
    with_objects = [r["recall"] for r in records if r.get("recall")]
    total = sum(r["adaptive"][2 * which] for r in with_objects)  # named or other patches
    if not total:
        return {}
    names = sorted({m for r in with_objects for m in r["methods"]})
    return {m: sum(r["methods"][m][which] for r in with_objects if m in r["methods"]) / total for m in names}


def balancer(records: list[dict[str, Any]], scorer_names: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """Each scorer's mean balancer weight and its spread across samples, per question type and over all."""
    groups: dict[str, list[list[float]]] = defaultdict(list)
    for rec in records:
        groups[rec["type"]].append(rec["weights"])
        groups["all"].append(rec["weights"])
    return {t: {name: {"mean": statistics.fmean(w[s] for w in ws),
                       "std": statistics.pstdev(w[s] for w in ws)} for s, name in enumerate(scorer_names)}
            for t, ws in sorted(groups.items())}


def oracle(records: list[dict[str, Any]], tolerance: float) -> dict[str, Any] | None:
    """The per-sample smallest sufficient k, its distribution, and the oracle's accuracy at each cap against fixed
    k at the same mean (what adaptivity could buy)."""
    with_oracle = [r for r in records if r.get("oracle")]
    if not with_oracle:
        return None
    ks = with_oracle[0]["oracle"]["ks"]
    k_star = [smallest_sufficient_k(r["oracle"]["answers"], r["oracle"]["losses"], ks, tolerance) for r in with_oracle]
    for rec, k in zip(with_oracle, k_star, strict=True):
        rec["oracle_k"] = k

    def dist(values: list[int]) -> dict[str, float]:
        return {"mean": statistics.fmean(values), "p10": _quantile(values, 0.1), "p50": _quantile(values, 0.5),
                "p90": _quantile(values, 0.9), "samples": len(values)}

    by_type: dict[str, list[int]] = defaultdict(list)
    by_objects: dict[str, list[int]] = defaultdict(list)
    for rec, k in zip(with_oracle, k_star, strict=True):
        by_type[rec["type"]].append(k)
        if rec.get("recall"):
            by_objects[str(rec["recall"]["objects"])].append(k)
    fixed = [{"k": k, "accuracy": statistics.fmean(r["oracle"]["acc"][j] for r in with_oracle)}
             for j, k in enumerate(ks)]
    curve = []
    for cap in ks:  # each sample at min(its sufficient k, cap): the oracle's best use of a cap
        js = [ks.index(min(k, cap)) for k in k_star]
        acc = statistics.fmean(r["oracle"]["acc"][j] for r, j in zip(with_oracle, js, strict=True))
        mean_k = statistics.fmean(ks[j] for j in js)
        curve.append({"cap": cap, "mean_tokens": mean_k, "accuracy": acc,
                      "fixed_at_same_mean": _interpolate(fixed, mean_k)})
    return {"ks": ks, "tolerance": tolerance, "k_star": dist(k_star),
            "k_star_by_type": {t: dist(v) for t, v in sorted(by_type.items())},
            "k_star_by_objects": {t: dist(v) for t, v in sorted(by_objects.items(), key=lambda kv: int(kv[0]))},
            "fixed": fixed, "curve": curve}


def _interpolate(fixed: list[dict[str, float]], k: float) -> float:
    """Fixed-k accuracy at a mean budget between the measured ks (linear)."""
    for a, b in zip(fixed, fixed[1:], strict=False):
        if a["k"] <= k <= b["k"]:
            w = (k - a["k"]) / (b["k"] - a["k"])
            return a["accuracy"] + w * (b["accuracy"] - a["accuracy"])
    return fixed[0]["accuracy"] if k < fixed[0]["k"] else fixed[-1]["accuracy"]


def summarize(records: list[dict[str, Any]], scorer_names: list[str], command: str, tolerance: float,
              notes: list[str]) -> dict[str, Any]:
    """Everything ``tokens.json`` holds."""
    if not records:
        raise ValueError("no evaluated samples: the evaluation split gave no valid sample with answers")
    budgets = [r["head_budget"] for r in records]
    orc = oracle(records, tolerance)
    rho = spearman(budgets, [r["oracle_k"] for r in records]) if orc else None
    return {"methods": methods_table(records),
            "budget": {"p10": _quantile(budgets, 0.1), "p50": _quantile(budgets, 0.5), "p90": _quantile(budgets, 0.9),
                       "mean": statistics.fmean(budgets), "spearman_oracle": rho},
            "recall": method_recall(records), "recall_other": method_recall(records, which=1),
            "balancer": balancer(records, scorer_names),
            "question_use": question_use(records), "oracle": orc, "samples": len(records), "command": command,
            "notes": notes}


def _fmt(x: float | None, digits: int = 1, scale: float = 100.0) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x * scale:.{digits}f}"


def markdown(summary: dict[str, Any]) -> str:
    """``tokens.md``: the tables a reader needs, with the honest reading of each."""
    methods = summary["methods"]
    ref_name = "full_trained" if "full_trained" in methods else "full"
    ref = methods[ref_name][0]["accuracy"]
    lines = [f"# arrcoc bench tokens ({summary['samples']} samples)", "", f"`{summary['command']}`", "",
             f"Accuracy is VQA soft accuracy (%) ± one standard error; ratio is against `{ref_name}` "
             f"({_fmt(ref)}%).", ""]
    full, shuffled = methods.get("full", [None])[0], methods.get("shuffled", [None])[0]
    if full and shuffled:
        gap, se = full["accuracy"] - shuffled["accuracy"], math.hypot(full["stderr"] or 0, shuffled["stderr"] or 0)
        lines += [f"Image use: all tokens {_fmt(full['accuracy'])}% vs another sample's image "
                  f"{_fmt(shuffled['accuracy'])}% (gap {_fmt(gap)} points, one standard error {_fmt(se)})."
                  + (" **The gap is within two standard errors: the model barely uses the image, so differences "
                     "between selections below are noise.**" if gap < 2 * se else ""), ""]
    lines += ["| method | target | visual tokens | accuracy | ± | ratio |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for name, rows in methods.items():
        for row in rows:
            lines.append(f"| {name} | {row['target']} | {row['mean_tokens']:.1f} | {_fmt(row['accuracy'])} | "
                         f"{_fmt(row['stderr'])} | {_fmt(row['accuracy'] / ref if ref else math.nan)}% |")
    types = sorted({t for rows in methods.values() for row in rows for t in row["by_type"]})
    if len(types) > 1:
        lines += ["", "Per question type, at the head's own budgets (`head`) and all tokens:", "",
                  "| method | " + " | ".join(types) + " |", "| --- |" + " ---: |" * len(types)]
        for name, rows in methods.items():
            row = next((r for r in rows if r["target"] in ("head", "576")), None)
            if row is not None:
                lines.append(f"| {name} | " + " | ".join(_fmt(row["by_type"].get(t)) for t in types) + " |")
    b = summary["budget"]
    rho = "–" if b["spearman_oracle"] is None else f"{b['spearman_oracle']:.2f}"
    lines += ["", f"Budgets of the head (kept patches): p10 {b['p10']:.0f}, p50 {b['p50']:.0f}, p90 {b['p90']:.0f}, "
              f"mean {b['mean']:.1f}; Spearman with the oracle's k: {rho}."]
    if summary["question_use"]:
        lines += ["", "Question use (share of object patches kept; `swapped`: the named objects' patches kept by the "
                  "selection made for another sample's question):", "",
                  "| k | recall_named | recall_other | recall_swapped |", "| --- | ---: | ---: | ---: |"]
        for k, r in summary["question_use"].items():
            lines.append(f"| {k} | {_fmt(r['recall_named'])} | {_fmt(r['recall_other'])} | "
                         f"{_fmt(r['recall_swapped'])} |")
        lines += ["", "Each ranking at the head's budgets, share of the named / the other objects' patches kept: "
                  + ", ".join(f"{m} {_fmt(v)} / {_fmt(summary['recall_other'].get(m))}"
                              for m, v in summary["recall"].items()) + "."]
    lines += ["", "Balancer weights (mean ± spread across samples):", "",
              "| type | " + " | ".join(next(iter(summary["balancer"].values()))) + " |",
              "| --- |" + " ---: |" * len(next(iter(summary["balancer"].values())))]
    for t, ws in summary["balancer"].items():
        lines.append(f"| {t} | " + " | ".join(f"{w['mean']:.3f} ± {w['std']:.3f}" for w in ws.values()) + " |")
    if summary["oracle"]:
        o = summary["oracle"]
        lines += ["", f"Oracle (learned ranking, k in {o['ks']}; sufficient: the all-token answer, loss within "
                  f"{o['tolerance']} nats): smallest sufficient k mean {o['k_star']['mean']:.0f}, p10 "
                  f"{o['k_star']['p10']:.0f}, p50 {o['k_star']['p50']:.0f}, p90 {o['k_star']['p90']:.0f}.", "",
                  "| cap | oracle mean k | oracle accuracy | fixed k at that mean | headroom |",
                  "| ---: | ---: | ---: | ---: | ---: |"]
        for c in o["curve"]:
            lines.append(f"| {c['cap']} | {c['mean_tokens']:.0f} | {_fmt(c['accuracy'])} | "
                         f"{_fmt(c['fixed_at_same_mean'])} | {_fmt(c['accuracy'] - c['fixed_at_same_mean'])} |")
        lines += ["", "Smallest sufficient k per question type: " + ", ".join(
            f"{t} {d['mean']:.0f} (p10 {d['p10']:.0f}, p90 {d['p90']:.0f})" for t, d in o["k_star_by_type"].items())
            + "."]
    if summary["notes"]:
        lines += ["", "Notes: " + "; ".join(summary["notes"]) + "."]
    return "\n".join(lines) + "\n"


def pareto_png(summary: dict[str, Any], path: Path) -> None:
    """Accuracy against mean visual tokens, one line per method; the all-token references as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    colors = iter(plt.get_cmap("tab20").colors)  # 20 distinct colours: one per method
    for name, rows in summary["methods"].items():
        color = "black" if name == "adaptive" else next(colors)
        if name in ("full", "full_trained", "shuffled"):
            ax.axhline(100 * rows[0]["accuracy"], linestyle=":" if name == "shuffled" else "--", linewidth=1,
                       color=color, label=f"{name} ({rows[0]['mean_tokens']:.0f} tokens)")
            continue
        pts = sorted((r["mean_tokens"], 100 * r["accuracy"]) for r in rows)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, color=color,
                linestyle="--" if name.startswith("scorer:") else "-",
                linewidth=2.0 if name in ("adaptive", "fixed") else 0.9, label=name)
    ax.set_xlabel("mean visual tokens per sample")
    ax.set_ylabel("VQA accuracy (%)")
    ax.set_title(f"arrcoc bench tokens ({summary['samples']} samples)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")  # by name: the path may be a temporary one
    plt.close(fig)


def _no_nan(value: Any) -> Any:
    """NaN (no standard error from one sample, no recall without objects) as JSON null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_no_nan(v) for v in value]
    return value


def write(summary: dict[str, Any], out: Path) -> None:
    """``out/tokens.json``, ``out/tokens.md``, ``out/pareto.png``."""
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "tokens.json", json.dumps(_no_nan(summary), indent=1, allow_nan=False) + "\n")
    write_text(out / "tokens.md", markdown(summary))
    with atomic_path(out / "pareto.png") as tmp:
        pareto_png(summary, tmp)
