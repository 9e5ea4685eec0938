"""The stages the streams are built from: small generators, each turning one form of item into the next.

Training (``TrainStream``): worker_shards -> resampled (per source) -> mixed -> shuffled (raw bytes) ->
decoded -> preprocessed -> usable -> batched -> resumed -> collated. Evaluation (``EvalStream``): its
sample positions -> decoded -> preprocessed -> placeholders -> batched -> collated.

Every stage pulls one item from the stage before it when asked for one, so the reads and the random
draws happen in exactly the order of the old single loop: the same seed gives the same batches, and a
resumed epoch the same order (see ``data/README.md`` for why these are arrcoc's and not webdataset's).
A :class:`Skip` between stages marks a sample that was dropped, counted where it was made; later stages
pass it on, and the last decides: training drops it (:func:`usable`), evaluation puts a placeholder in
its place (:func:`placeholders`).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from arrcoc.data.shards import BadSample, RawSample, Skip, decode, shard_samples
from arrcoc.data.sources import split_for

T = TypeVar("T")
Sample = dict[str, Any]
OnSkip = Callable[[Skip], None]  # e.g. a SkipCounter


def worker_shards(urls: list[str], rank: int, world_size: int, worker: int, num_workers: int) -> list[str]:
    """One worker's shards: strided by global rank, then by worker; all shared where there are too few."""
    mine = split_for(urls, rank, world_size, share_if_short=True)
    return split_for(mine, worker, num_workers, share_if_short=True)


def resampled(urls: list[str], rng: random.Random, skips: OnSkip) -> Iterator[RawSample]:
    """Samples of shards drawn with replacement (``rng.choice``), endlessly; an error when none is readable."""
    empty_rounds = 0
    while True:
        got = False
        for raw in shard_samples(rng.choice(urls), skips):
            got = True
            yield raw
        empty_rounds = 0 if got else empty_rounds + 1
        if empty_rounds > 10 * len(urls):
            raise RuntimeError(f"no readable samples in {len(urls)} shard(s), e.g. {urls[0]}")


def mixed(streams: Sequence[Iterator[T]], weights: Sequence[float], rng: random.Random) -> Iterator[T]:
    """Items of endless streams, the stream of each drawn by weight (``rng.choices``; no draw for one)."""
    while True:
        i = rng.choices(range(len(streams)), weights)[0] if len(streams) > 1 else 0
        yield next(streams[i])


def shuffled(items: Iterable[T], size: int, rng: random.Random) -> Iterator[T]:
    """Items through a buffer of ``size``: once it is full, each new item goes in and a random one
    (``rng.randrange``) comes out; the rest, in random order, at the end. ``size <= 1``: unchanged."""
    if size <= 1:
        yield from items
        return
    buffer: list[T] = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= size:
            yield buffer.pop(rng.randrange(len(buffer)))
    while buffer:
        yield buffer.pop(rng.randrange(len(buffer)))


def decoded(raws: Iterable[RawSample | Skip], skips: OnSkip) -> Iterator[Sample | Skip]:
    """Decoded samples (:func:`~arrcoc.data.shards.decode`); an undecodable one becomes its counted Skip."""
    for raw in raws:
        if isinstance(raw, Skip):
            yield raw
            continue
        try:
            sample: Sample | Skip = decode(raw)
        except BadSample as err:
            sample = Skip(raw.url, raw.key, err.reason, str(err))
            skips(sample)
        yield sample


def preprocessed(samples: Iterable[Sample | Skip], preprocess: Callable[[Sample], Sample],
                 skips: OnSkip) -> Iterator[Sample | Skip]:
    """Model-ready samples; one that ``preprocess`` refuses (BadSample) becomes its counted Skip."""
    for sample in samples:
        if not isinstance(sample, Skip):
            try:
                sample = preprocess(sample)
            except BadSample as err:
                sample = Skip(sample["__url__"], sample["__key__"], err.reason, str(err))
                skips(sample)
        yield sample


def usable(samples: Iterable[Sample | Skip], max_failures: int, counts: Callable[[], dict]) -> Iterator[Sample]:
    """The samples without the Skips; more than ``max_failures`` Skips in a row is an error that names
    the skip ``counts()`` (a training source where nothing is usable fails instead of looping)."""
    failures = 0
    for sample in samples:
        if not isinstance(sample, Skip):
            failures = 0
            yield sample
            continue
        failures += 1
        if failures > max_failures:
            raise RuntimeError(f"{failures} samples in a row could not be used (skipped: {counts()}); check the "
                               "training source")


def placeholders(samples: Iterable[Sample | Skip], placeholder: Callable[[], Sample]) -> Iterator[Sample]:
    """The samples, each Skip replaced by ``placeholder()``: evaluation keeps every position."""
    for sample in samples:
        yield placeholder() if isinstance(sample, Skip) else sample


def batched(samples: Iterable[T], size: int, partial: bool = False) -> Iterator[list[T]]:
    """Lists of ``size`` items; a shorter last one only with ``partial`` (training batches are all full)."""
    batch: list[T] = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == size:
            yield batch
            batch = []
    if partial and batch:
        yield batch


def resumed(batches: Iterable[T], done: int, total: int) -> Iterator[T]:
    """Batches ``done`` to ``total - 1``: the first ``done`` are still drawn (the same reads and random
    draws) and dropped, so a resumed epoch goes on exactly as the uninterrupted one; none past ``total``."""
    yield from itertools.islice(batches, done, total)


def collated(batches: Iterable[list[Sample]], collate: Callable[[list[Sample]], dict[str, Any]],
             stats: Callable[[], dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Collated batches, each carrying ``data_stats`` = ``stats()`` (see :mod:`arrcoc.data.stats`)."""
    for batch in batches:
        out = collate(batch)
        out["data_stats"] = stats()
        yield out
