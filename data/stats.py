"""Data statistics: skipped samples counted per reason in each worker, and the table they are read from.

A DataLoader's workers are separate processes, so a worker's counts travel with the batches it yields:
every batch of a stream carries ``data_stats`` = ``{"worker": (rank, worker, epoch), "skipped": {reason:
n}}``, the worker's cumulative counts so far. The :class:`~arrcoc.data.stream.EpochDataLoader` is the one
place that reads them: it records each batch's ``data_stats`` in a :data:`StatsTable` as the batch passes
(the ``VQADataModule`` reads its counters from there and drops the entry before the batch reaches the
model; ``model_inputs`` leaves it out too).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from arrcoc.data.shards import Skip

log = logging.getLogger("arrcoc.data")

#: (rank, worker, epoch) -> {reason: skipped samples}: the latest cumulative counts of each worker pass.
StatsTable = dict[tuple[int, int, int], dict[str, int]]


class SkipCounter:
    """Counts skipped samples by reason and warns with the shard and key (the first few of each
    reason, then every 1000th, so a broken source does not drown the log)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def __call__(self, skip: Skip, samples: int = 1) -> None:
        """Count ``skip`` as ``samples`` skipped samples (a shard that lost 20 samples is 20, logged once)."""
        before = self.counts.get(skip.reason, 0)
        if samples:  # 0: logged, not counted (a shard-level event in evaluation, whose lost samples count apart)
            self.counts[skip.reason] += samples
        n = self.counts.get(skip.reason, 0)
        if before < 5 or n // 1000 > before // 1000:
            what = skip.key if samples == 1 else f"{samples} samples"
            log.warning("skipped %s in %s (%s, #%d of this kind)%s", what, skip.url, skip.reason, n,
                        f": {skip.detail}" if skip.detail else "")


def worker_stats(skips: SkipCounter, rank: int, worker: int, epoch: int) -> dict[str, Any]:
    """The ``data_stats`` entry a worker attaches to a batch: its counts so far, and who it is."""
    return {"worker": (rank, worker, epoch), "skipped": dict(skips.counts)}


def record_stats(batch: dict[str, Any], table: StatsTable) -> None:
    """Note a batch's ``data_stats`` (if any) in ``table``; the batch is left as it is."""
    stats = batch.get("data_stats")
    if stats is not None:
        table[tuple(stats["worker"])] = stats["skipped"]


def total_skipped(table: StatsTable) -> int:
    """Skipped samples in a table (all its workers and epochs; one rank's: the logger sums ranks)."""
    return sum(sum(c.values()) for c in table.values())


def skipped_by_reason(*tables: StatsTable) -> dict[str, int]:
    """Skipped samples per reason over several tables."""
    out: Counter[str] = Counter()
    for table in tables:
        for counts in table.values():
            out.update(counts)
    return dict(out)
