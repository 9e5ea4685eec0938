"""The streaming datasets: shard list -> split by rank -> split by worker -> read -> shuffle (raw
bytes) -> decode -> preprocess -> batch. Batching happens inside each worker (the loader's
batch_size is None), so every batch a rank yields is full and the batch counts are fixed up front.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from arrcoc.data.shards import BadSample, RawSample, Skip, decode, is_sample, iter_tar
from arrcoc.data.sources import Source, split_for

log = logging.getLogger("arrcoc.data")

Preprocess = Callable[[dict[str, Any]], dict[str, Any]]
Collate = Callable[[list[dict[str, Any]]], dict[str, Any]]


class SkipCounter:
    """Counts skipped samples by reason and warns with the shard and key (the first few of each
    reason, then every 1000th, so a broken source does not drown the log)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def __call__(self, skip: Skip) -> None:
        self.counts[skip.reason] += 1
        n = self.counts[skip.reason]
        if n <= 5 or n % 1000 == 0:
            log.warning("skipped %s in %s (%s, #%d of this kind)%s", skip.key, skip.url, skip.reason, n,
                        f": {skip.detail}" if skip.detail else "")


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def decode_or_skip(raw: RawSample, skips: SkipCounter) -> dict[str, Any] | None:
    try:
        return decode(raw)
    except BadSample as err:
        skips(Skip(raw.url, raw.key, err.reason, str(err)))
        return None


def decoded(url: str, skips: SkipCounter) -> Iterator[dict[str, Any] | Skip]:
    """A shard's samples decoded; bad ones come out as :class:`Skip` (and are counted)."""
    for item in iter_tar(url):
        if isinstance(item, Skip):
            skips(item)
            yield item
        elif is_sample(item):
            sample = decode_or_skip(item, skips)
            yield sample if sample is not None else Skip(url, item.key, "bad_sample")


def _stats(skips: SkipCounter, rank: int, worker: int, epoch: int) -> dict[str, Any]:
    return {"worker": (rank, worker, epoch), "skipped": dict(skips.counts)}


class TrainStream(IterableDataset):
    """Infinite, resampled, shuffled training stream; each worker yields a fixed number of full batches.

    Shards are split by the trainer's global rank (not by environment variables), then by worker;
    with fewer shards than ranks (or workers), all of them are shared and resampled with different
    seeds. Several sources are mixed by weight. The shuffle buffer holds raw bytes; images are
    decoded after shuffling.
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
        base, extra = divmod(self.batches_per_rank, num_workers)
        return base + (1 if worker < extra else 0)

    def _raw(self, rng: random.Random, skips: SkipCounter, worker: int, nworkers: int) -> Iterator[RawSample]:
        streams = []
        for src in self.sources:
            mine = split_for(src.urls, self.rank, self.world_size, share_if_short=True)
            streams.append(self._resampled(split_for(mine, worker, nworkers, share_if_short=True), rng, skips))
        weights = [s.weight for s in self.sources]
        while True:
            i = rng.choices(range(len(streams)), weights)[0] if len(streams) > 1 else 0
            yield next(streams[i])

    def _resampled(self, urls: list[str], rng: random.Random, skips: SkipCounter) -> Iterator[RawSample]:
        empty_rounds = 0
        while True:
            got = False
            for item in iter_tar(rng.choice(urls)):
                if isinstance(item, Skip):
                    skips(item)
                elif is_sample(item):
                    got = True
                    yield item
            empty_rounds = 0 if got else empty_rounds + 1
            if empty_rounds > 10 * len(urls):
                raise RuntimeError(f"no readable samples in {len(urls)} shard(s), e.g. {urls[0]}")

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, nworkers = _worker()
        rng = random.Random(f"{self.seed}/{self.epoch}/{self.rank}/{worker}")
        skips = SkipCounter()
        buffer: list[RawSample] = []
        batch: list[dict] = []
        remaining = self.batches_for_worker(worker, nworkers)
        # The loader takes batches from workers in turn: batch i comes from worker i % nworkers.
        to_skip = len(range(worker, min(self.skip_batches, self.batches_per_rank), nworkers))
        raws = self._raw(rng, skips, worker, nworkers)
        failures = 0
        while remaining > 0:
            raw = next(raws)
            if self.shuffle_buffer > 1:
                buffer.append(raw)
                if len(buffer) < self.shuffle_buffer:
                    continue
                raw = buffer.pop(rng.randrange(len(buffer)))
            sample = decode_or_skip(raw, skips)
            try:
                if sample is None:
                    raise BadSample("undecodable")
                batch.append(self.preprocess(sample))
                failures = 0
            except BadSample as err:
                if sample is not None:
                    skips(Skip(raw.url, raw.key, err.reason, str(err)))
                failures += 1
                if failures > self.max_failures:
                    raise RuntimeError(f"{failures} samples in a row could not be used (skipped: "
                                       f"{dict(skips.counts)}); check the training source") from err
                continue
            if len(batch) == self.batch_size:
                if to_skip > 0:  # replayed exactly (same reads, same RNG draws), then dropped
                    to_skip -= 1
                else:
                    out = self.collate(batch)
                    out["data_stats"] = _stats(skips, self.rank, worker, self.epoch)
                    yield out
                batch, remaining = [], remaining - 1


class EvalStream(IterableDataset):
    """Deterministic evaluation stream: every sample exactly once across ranks, equal batch counts.

    The samples (in shard order, counted by the manifest) are cut into ``world_size`` contiguous
    ranges of equal padded length; each rank's range into contiguous per-worker chunks. A position
    past the end, or a sample that can't be read, yields a placeholder marked ``valid=False`` instead
    of disappearing, so no rank ever runs short of batches. Only samples in a worker's own range are
    decoded. A shard whose sample count differs from its manifest entry is reported
    (``manifest_mismatch``); its missing positions become placeholders, extra samples are not read.
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

    def _positions(self, start: int, stop: int, skips: SkipCounter) -> Iterator[dict[str, Any] | None]:
        offset = 0
        for url, count in self.shards:
            lo, hi = max(start, offset), min(stop, offset + count)
            if lo < hi:
                seen = 0
                for item in iter_tar(url):
                    if isinstance(item, Skip):
                        skips(item)
                        continue
                    if not is_sample(item):
                        continue
                    pos = offset + seen
                    seen += 1
                    if pos >= hi:
                        break
                    if pos >= lo:
                        yield decode_or_skip(item, skips)
                if offset + seen < hi:  # the shard holds fewer samples than its manifest says
                    skips(Skip(url, "*", "manifest_mismatch", f"manifest says {count}, found {seen}"))
                    for _ in range(max(lo, offset + seen), hi):
                        yield None
            offset += count
        for _ in range(max(start, self.total), stop):  # padding past the end
            yield None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, nworkers = _worker()
        start, stop = self.worker_range(worker, nworkers)
        skips = SkipCounter()
        batch: list[dict] = []
        for sample in self._positions(start, stop, skips):
            item = None
            if sample is not None:
                try:
                    item = self.preprocess(sample)
                except BadSample as err:
                    skips(Skip(sample["__url__"], sample["__key__"], err.reason, str(err)))
            batch.append(item if item is not None else self.placeholder())
            if len(batch) == self.batch_size:
                yield self._emit(batch, skips, worker)
                batch = []
        if batch:
            yield self._emit(batch, skips, worker)

    def _emit(self, batch: list[dict], skips: SkipCounter, worker: int) -> dict[str, Any]:
        out = self.collate(batch)
        out["data_stats"] = _stats(skips, self.rank, worker, self.epoch)
        return out


class EpochDataLoader(DataLoader):
    """A DataLoader that tells its stream the epoch before each pass (IterableDatasets get no
    ``set_epoch`` from Lightning), so every epoch draws a new shard order, and a resumed run the
    same order it would have drawn."""

    def __init__(self, dataset: IterableDataset, epoch_fn: Callable[[], int],
                 skip_fn: Callable[[int], int] | None = None, **kwargs: Any) -> None:
        super().__init__(dataset, batch_size=None, **kwargs)
        self._epoch_fn, self._skip_fn = epoch_fn, skip_fn

    def __iter__(self):
        self.dataset.epoch = self._epoch_fn()
        if self._skip_fn is not None:
            self.dataset.skip_batches = self._skip_fn(self.dataset.epoch)
        return super().__iter__()


def collect_stats(batch: dict[str, Any], table: dict[tuple, dict[str, int]]) -> None:
    """Move a batch's ``data_stats`` into ``table``: the latest cumulative counts per (rank, worker,
    epoch), so totals add up across epochs."""
    stats = batch.pop("data_stats", None)
    if stats is not None:
        table[tuple(stats["worker"])] = stats["skipped"]


def total_skipped(table: dict[tuple, dict[str, int]]) -> int:
    return sum(sum(c.values()) for c in table.values())
