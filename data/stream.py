"""The streaming datasets, each a list of stages (:mod:`arrcoc.data.stages`), and the loader that
reads their statistics.

Training: shards split by rank, then by worker -> resampled and mixed -> shuffled (raw bytes) -> decoded
-> preprocessed -> batched. Batching happens inside each worker (the loader's batch_size is None), so
every batch a rank yields is full and the batch counts are fixed up front.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from arrcoc.data import stages
from arrcoc.data.shards import RawSample, Skip, shard_samples
from arrcoc.data.sources import Source
from arrcoc.data.stats import SkipCounter, StatsTable, record_stats, total_skipped, worker_stats

__all__ = ["EpochDataLoader", "EvalStream", "SkipCounter", "TrainStream", "decoded", "total_skipped"]

Preprocess = Callable[[dict[str, Any]], dict[str, Any]]
Collate = Callable[[list[dict[str, Any]]], dict[str, Any]]


def _worker() -> tuple[int, int]:
    """(this worker's index, the number of workers); (0, 1) outside a DataLoader worker."""
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def decoded(url: str, skips: SkipCounter) -> Iterator[dict[str, Any] | Skip]:
    """A shard's samples decoded, for inspection: every skip (of the shard, or of a sample) is counted
    and also comes out, in its place, as a :class:`Skip`."""
    shard_skips: list[Skip] = []

    def note(skip: Skip) -> None:
        skips(skip)
        shard_skips.append(skip)

    for item in stages.decoded(shard_samples(url, note), skips):
        yield from shard_skips
        shard_skips.clear()
        yield item
    yield from shard_skips


class TrainStream(IterableDataset):
    """Infinite, resampled, shuffled training stream; each worker yields a fixed number of full batches.

    Shards are split by the trainer's global rank (not by environment variables), then by worker;
    with fewer shards than ranks (or workers), all of them are shared and resampled with different
    seeds. Several sources are mixed by weight. The shuffle buffer holds raw bytes; images are
    decoded after shuffling. ``__iter__`` is the list of stages; one ``random.Random`` per (seed,
    epoch, rank, worker) makes every draw, so an epoch's order is reproducible and resumable.
    """

    def __init__(self, sources: list[Source], preprocess: Preprocess, collate: Collate, batch_size: int,
                 batches_per_rank: int, rank: int = 0, world_size: int = 1, shuffle_buffer: int = 1000,
                 seed: int = 0) -> None:
        self.sources, self.preprocess, self.collate = sources, preprocess, collate
        self.batch_size, self.batches_per_rank = batch_size, batches_per_rank
        self.rank, self.world_size = rank, world_size
        self.shuffle_buffer, self.seed = shuffle_buffer, seed
        self.epoch = 0
        self.skip_batches = 0  # batches of this epoch already trained on (a mid-epoch resume)
        self.max_failures = 1000 + 10 * shuffle_buffer  # consecutive unusable samples before giving up

    def __len__(self) -> int:
        """Batches per epoch on this rank (what Lightning and progress bars count)."""
        return self.batches_per_rank

    def batches_for_worker(self, worker: int, num_workers: int) -> int:
        """This worker's share of the rank's batches (the first ``batches_per_rank % num_workers`` get one more)."""
        base, extra = divmod(self.batches_per_rank, num_workers)
        return base + (1 if worker < extra else 0)

    def batches_replayed(self, worker: int, num_workers: int) -> int:
        """This worker's share of ``skip_batches``: the loader takes batch i from worker i % num_workers."""
        return len(range(worker, min(self.skip_batches, self.batches_per_rank), num_workers))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, nworkers = _worker()
        rng = random.Random(f"{self.seed}/{self.epoch}/{self.rank}/{worker}")  # every draw below, in order
        skips = SkipCounter()
        per_source = [stages.resampled(stages.worker_shards(src.urls, self.rank, self.world_size, worker, nworkers),
                                       rng, skips) for src in self.sources]
        raws = stages.mixed(per_source, [src.weight for src in self.sources], rng)
        raws = stages.shuffled(raws, self.shuffle_buffer, rng)  # raw bytes: the buffer holds no decoded image
        samples = stages.decoded(raws, skips)
        samples = stages.preprocessed(samples, self.preprocess, skips)
        samples = stages.usable(samples, self.max_failures, lambda: dict(skips.counts))
        batches = stages.batched(samples, self.batch_size)
        batches = stages.resumed(batches, self.batches_replayed(worker, nworkers),
                                 self.batches_for_worker(worker, nworkers))
        yield from stages.collated(batches, self.collate, lambda: worker_stats(skips, self.rank, worker, self.epoch))


class EvalStream(IterableDataset):
    """Deterministic evaluation stream: every sample exactly once across ranks, equal batch counts.

    The samples (in shard order, counted by the manifest) are cut into ``world_size`` contiguous
    ranges of equal padded length; each rank's range into contiguous per-worker chunks. A position
    past the end, or a sample that can't be read, yields a placeholder marked ``valid=False`` instead
    of disappearing, so no rank ever runs short of batches. Only samples in a worker's own range are
    decoded. A shard whose sample count differs from its manifest entry is reported, counted per sample:
    fewer (``manifest_mismatch``): its missing positions become placeholders; more
    (``manifest_undercount``): the extra samples are counted, not evaluated (positions follow the
    manifest on every rank).
    """

    def __init__(self, sources: list[Source], preprocess: Preprocess, placeholder: Callable[[], dict[str, Any]],
                 collate: Collate, batch_size: int, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0) -> None:
        missing = [s.name for s in sources if s.counts is None]
        if missing:
            raise ValueError(f"evaluation sources need sample counts (a manifest.json): {missing}")
        self.sources, self.preprocess, self.placeholder, self.collate = sources, preprocess, placeholder, collate
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.shards = [(u, c) for s in sources for u, c in zip(s.urls, s.counts, strict=True)]
        self.total = sum(c for _, c in self.shards)
        self.per_rank = math.ceil(self.total / world_size)
        self.num_workers = num_workers
        self.epoch = 0

    def __len__(self) -> int:
        return self.num_batches(max(self.num_workers, 1))

    def worker_range(self, worker: int, nworkers: int) -> tuple[int, int]:
        """Global sample positions [start, stop) of one worker of this rank (stop may pass the end)."""
        chunk = math.ceil(self.per_rank / nworkers)
        start = self.rank * self.per_rank + min(worker * chunk, self.per_rank)
        stop = self.rank * self.per_rank + min((worker + 1) * chunk, self.per_rank)
        return start, stop

    def num_batches(self, nworkers: int) -> int:
        """Batches this rank yields with ``nworkers`` workers: identical on every rank."""
        return sum(math.ceil((b - a) / self.batch_size)
                   for a, b in (self.worker_range(w, nworkers) for w in range(nworkers)))

    def _positions(self, start: int, stop: int, skips: SkipCounter) -> Iterator[RawSample | Skip]:
        """One item per global sample position in [start, stop): the raw sample, or a Skip where there
        is none (its shard holds fewer than the manifest says, or the position is past the end)."""
        offset = 0
        for url, count in self.shards:
            lo, hi = max(start, offset), min(stop, offset + count)
            if lo < hi:
                # A shard-level skip (key "*": unopenable, cut off) is logged here but counted as the samples
                # it loses, below: evaluation counts samples, not events.
                samples = shard_samples(url, lambda skip: skips(skip, 0 if skip.key == "*" else 1))
                seen = 0
                for raw in samples:
                    pos = offset + seen
                    seen += 1
                    if pos >= hi:
                        break
                    if pos >= lo:
                        yield raw
                if offset + seen < hi:  # the shard holds fewer samples than its manifest says
                    missing = Skip(url, "*", "manifest_mismatch", f"manifest says {count}, found {seen}")
                    skips(missing, hi - max(lo, offset + seen))  # each lost sample counts, and gets a placeholder
                    for _ in range(max(lo, offset + seen), hi):
                        yield missing
                elif hi == offset + count and offset + seen > hi:  # the shard goes on past its manifest count
                    extra = 1 + sum(1 for _ in samples)  # the one that ended the loop, and the rest
                    skips(Skip(url, "*", "manifest_undercount", f"manifest says {count}, the shard holds "
                               f"{count + extra}: {extra} not evaluated (rewrite its manifest.json)"), extra)
            offset += count
        for _ in range(max(start, self.total), stop):  # padding past the end (not a skip: nothing is missing)
            yield Skip("", "*", "padding")

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, nworkers = _worker()
        skips = SkipCounter()
        raws = self._positions(*self.worker_range(worker, nworkers), skips)
        samples = stages.decoded(raws, skips)
        samples = stages.preprocessed(samples, self.preprocess, skips)
        samples = stages.placeholders(samples, self.placeholder)
        batches = stages.batched(samples, self.batch_size, partial=True)
        yield from stages.collated(batches, self.collate, lambda: worker_stats(skips, self.rank, worker, self.epoch))


class EpochDataLoader(DataLoader):
    """A DataLoader that tells its stream the epoch before each pass (IterableDatasets get no
    ``set_epoch`` from Lightning), so every epoch draws a new shard order, and a resumed run the
    same order it would have drawn; ``skip_fn(epoch)`` gives the batches of that epoch already trained.

    It is also where data statistics are read: every batch's ``data_stats`` (see
    :mod:`arrcoc.data.stats`) is recorded in :attr:`stats` as the batch passes, so the skip counts
    are there whether or not Lightning drives the loop.
    """

    def __init__(self, dataset: IterableDataset, epoch_fn: Callable[[], int],
                 skip_fn: Callable[[int], int] | None = None, stats: StatsTable | None = None,
                 **kwargs: Any) -> None:
        super().__init__(dataset, batch_size=None, **kwargs)
        self._epoch_fn, self._skip_fn = epoch_fn, skip_fn
        self.stats: StatsTable = {} if stats is None else stats  # filled as batches pass

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.dataset.epoch = self._epoch_fn()
        if self._skip_fn is not None:
            self.dataset.skip_batches = self._skip_fn(self.dataset.epoch)
        return _Recorded(super().__iter__(), self.stats)

    @property
    def skipped(self) -> int:
        """Samples skipped in the batches this loader has delivered (all workers, all passes)."""
        return total_skipped(self.stats)


class _Recorded:
    """A loader iterator whose batches' ``data_stats`` are noted in a table as they pass."""

    def __init__(self, batches: Iterator[dict[str, Any]], table: StatsTable) -> None:
        self._batches, self._table = batches, table

    def __iter__(self) -> _Recorded:
        return self

    def __next__(self) -> dict[str, Any]:
        batch = next(self._batches)
        record_stats(batch, self._table)
        return batch

    def __len__(self) -> int:
        return len(self._batches)
