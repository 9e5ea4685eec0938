"""What an evaluation writes besides its metrics: the budget histogram, as a log line and as one JSON line
per evaluation in ``<log_dir>/<prefix>_budget_histogram.jsonl``, a file to plot how the allocation spreads
the budget over training."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from torch import Tensor

log = logging.getLogger("arrcoc.train")


def write_budget_histogram(log_dir: str | Path, prefix: str, step: int, edges: Tensor, counts: Tensor) -> Path | None:
    """Log the histogram and append ``{"step", "edges", "counts"}`` to ``<log_dir>/<prefix>_budget_histogram.jsonl``;
    returns the file, or None (nothing written) when no sample was counted.

    Args:
        edges: bin edges in visual tokens, ``(bins + 1,)``.
        counts: samples per bin, ``(bins,)``, already summed over ranks.
    """
    if int(counts.sum()) == 0:
        return None
    text = ", ".join(f"{int(edges[i])}-{int(edges[i + 1])}: {int(c)}" for i, c in enumerate(counts) if c)
    log.info("%s budget histogram: %s", prefix, text)
    out = Path(log_dir) / f"{prefix}_budget_histogram.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        f.write(json.dumps({"step": step, "edges": [int(e) for e in edges.tolist()],
                            "counts": [int(c) for c in counts.tolist()]}) + "\n")
    return out
