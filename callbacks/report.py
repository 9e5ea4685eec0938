"""The run report: ``report.md`` in the run's log directory at the end of ``fit``."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import lightning as L

from arrcoc.processing.files import atomic_path, write_text

log = logging.getLogger("arrcoc.train")


class RunReport(L.Callback):
    """At the end of ``fit``, writes ``report.md`` beside the run's logs (``trainer.log_dir``): the phase and where it
    stopped, the final metrics, the budget histogram of the last validation (``budget_histogram.png``), the
    accuracy-against-visual-tokens point (``accuracy_vs_tokens.png``, with the all-patches answer where the run
    measured it), links to the last allocation figures (:class:`~arrcoc.callbacks.AllocationFigures`) and the config
    the run used (``config.yaml``, which LightningCLI saves there). Rank 0 writes; nothing is collective.

    Args:
        filename: the report's name in the log directory.
    """

    def __init__(self, filename: str = "report.md") -> None:
        self.filename = filename
        self.path: Path | None = None  # where the last report went

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)  # a broadcast under DDP: every rank asks
        if not trainer.is_global_zero:
            return
        log_dir.mkdir(parents=True, exist_ok=True)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if _is_number(v)}
        lines = [f"# {type(pl_module).__name__}: step {trainer.global_step}", ""]
        stopped = "reached max_steps" if trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps else \
            f"stopped at step {trainer.global_step}"
        lines += [f"Run directory `{trainer.default_root_dir}`, logs `{log_dir}`; {stopped}.", ""]
        lines += ["## Final metrics", "", "Training metrics are the last logged step's; validation metrics the last "
                  "validation's.", "", "| metric | value |", "|---|---:|"]
        lines += [f"| `{k}` | {v:.4g} |" for k, v in sorted(metrics.items())] or ["| (none logged) | |"]
        lines.append("")
        histogram = _last_histogram(log_dir / "val_budget_histogram.jsonl")
        if histogram is not None:
            _plot_histogram(histogram, log_dir / "budget_histogram.png")
            lines += ["## Visual-token budgets (last validation)", "",
                      f"![budget histogram](budget_histogram.png) — step {histogram['step']}, "
                      f"{sum(histogram['counts'])} questions", ""]
        point = _accuracy_point(metrics, getattr(getattr(pl_module, "model", None), "encoder", None))
        if point is not None:
            _plot_accuracy(point, log_dir / "accuracy_vs_tokens.png")
            text = f"{point['acc']:.1%} at {point['tokens']:.0f} visual tokens on average"
            if point.get("acc_full") is not None:
                text += f"; {point['acc_full']:.1%} with all {point['full_tokens']} patches"
            lines += ["## Accuracy against visual tokens", "",
                      f"![accuracy vs tokens](accuracy_vs_tokens.png) — {text}", ""]
        figures = sorted((log_dir / "figures").glob("step*/sample*.png"))
        if figures:
            last = figures[-1].parent
            lines += [f"## Allocation figures ({last.name})", ""]
            lines += [f"- [{p.name}]({p.relative_to(log_dir).as_posix()})" for p in sorted(last.glob("sample*.png"))]
            lines.append("")
        config = log_dir / "config.yaml"
        if config.is_file():
            lines += ["## Config", "", "[config.yaml](config.yaml), as the run used it:", "", "<details>", "",
                      "```yaml", config.read_text().rstrip(), "```", "", "</details>", ""]
        self.path = log_dir / self.filename
        write_text(self.path, "\n".join(lines))
        log.info("run report: %s", self.path)


def _is_number(value: Any) -> bool:
    try:
        return value.numel() == 1 and math.isfinite(float(value))
    except (AttributeError, TypeError, ValueError):
        return isinstance(value, int | float) and math.isfinite(value)


def _last_histogram(path: Path) -> dict | None:
    if not path.is_file():
        return None
    rows = [line for line in path.read_text().splitlines() if line.strip()]
    return json.loads(rows[-1]) if rows else None


def _accuracy_point(metrics: dict[str, float], encoder: Any) -> dict | None:
    if "val/acc" not in metrics or "val/visual_tokens" not in metrics:
        return None
    full = getattr(encoder, "num_patches", None)
    return {"acc": metrics["val/acc"], "tokens": metrics["val/visual_tokens"],
            "acc_full": metrics.get("val/acc_full_tokens"), "full_tokens": full}


def _plot_histogram(hist: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges, counts = hist["edges"], hist["counts"]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(edges[:-1], counts, width=[b - a for a, b in zip(edges[:-1], edges[1:], strict=True)], align="edge",
           edgecolor="black", linewidth=0.3)
    ax.set_xlabel("visual tokens (budget k)")
    ax.set_ylabel("questions")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _plot_accuracy(point: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3))
    ax.scatter([point["tokens"]], [100 * point["acc"]], label="this run (allocated)", zorder=3)
    if point.get("acc_full") is not None and point.get("full_tokens"):
        ax.scatter([point["full_tokens"]], [100 * point["acc_full"]], marker="s", label="all patches", zorder=3)
    ax.set_xlabel("visual tokens per question (mean)")
    ax.set_ylabel("VQA accuracy (%)")
    ax.set_xlim(0, max(point.get("full_tokens") or 0, point["tokens"]) * 1.1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
