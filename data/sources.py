"""Where shards come from: local directories, brace patterns, ``pipe:`` commands, with weights."""

from __future__ import annotations

import glob
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from braceexpand import braceexpand

from arrcoc.data.shards import BadSample, Skip, decode, read_manifest, shard_samples

log = logging.getLogger("arrcoc.data")


@dataclass
class SourceConfig:
    """One source of shards.

    Args:
        path: a dataset directory (its ``*.tar`` and ``manifest.json``), a shard file, a brace
            pattern (``/data/vqav2/train-{000000..000099}.tar``), or a ``pipe:`` command with a brace
            pattern (``pipe:aws s3 cp s3://bucket/train-{000000..000099}.tar -``).
        weight: relative sampling weight when several training sources are mixed.
        manifest: path of a manifest file for sources that are not a local directory (optional;
            evaluating a source without one counts its samples by reading it once).
    """

    path: str
    weight: float = 1.0
    manifest: str | None = None


@dataclass
class Source:
    """A resolved source: its shard URLs and, where known, their sample counts."""

    name: str
    urls: list[str]
    weight: float
    counts: list[int] | None

    @property
    def total(self) -> int | None:
        return None if self.counts is None else sum(self.counts)


def resolve(spec: str | SourceConfig | dict) -> Source:
    """Expand a source spec into shard URLs; a local source that matches nothing is an error naming it."""
    cfg = SourceConfig(spec) if isinstance(spec, str) else SourceConfig(**spec) if isinstance(spec, dict) else spec
    if cfg.weight <= 0:
        raise ValueError(f"source {cfg.path!r}: weight={cfg.weight} must be > 0")
    path = os.path.expanduser(cfg.path)
    manifest = None
    if cfg.manifest:
        mpath = Path(os.path.expanduser(cfg.manifest))
        if not mpath.is_file():
            raise FileNotFoundError(f"source {cfg.path!r}: manifest {cfg.manifest!r} does not exist")
        manifest = json.loads(mpath.read_text())

    if path.startswith("pipe:") or "://" in path:
        urls = list(braceexpand(path))
    elif os.path.isdir(path):
        manifest = manifest or read_manifest(path)
        if manifest is not None:
            urls = [os.path.join(path, s["name"]) for s in manifest["shards"]]
            missing = [u for u in urls if not os.path.isfile(u)]
            if missing:
                raise FileNotFoundError(f"source {cfg.path!r}: manifest lists shards that are missing: {missing[:3]}")
        else:
            urls = sorted(glob.glob(os.path.join(path, "*.tar")))
            if urls:
                log.warning("source %s has no manifest.json (an interrupted conversion?): using the %d shards "
                            "found; evaluation will count their samples by reading them", cfg.path, len(urls))
    else:
        urls = [u for pattern in braceexpand(path) for u in sorted(glob.glob(pattern))]
    if not urls:
        raise FileNotFoundError(f"source {cfg.path!r}: no shards found (a directory of .tar files, a shard, "
                                "a brace pattern or a pipe: command is expected)")
    counts = None
    if manifest is not None:
        by_name = {s["name"]: s["samples"] for s in manifest["shards"]}
        names = [u.rsplit("/", 1)[-1].split(" ")[0] for u in urls]
        if all(n in by_name for n in names):
            counts = [by_name[n] for n in names]
    return Source(name=cfg.path, urls=urls, weight=cfg.weight, counts=counts)


def count_samples(source: Source) -> Source:
    """Fill in sample counts by reading every shard once (for sources without a manifest)."""
    if source.counts is None:
        log.warning("counting the samples of %s by reading its %d shards (give a manifest to skip this)",
                    source.name, len(source.urls))
        source.counts = [sum(1 for _ in shard_samples(u, _ignore)) for u in source.urls]
    return source


def first_sample(sources: list[Source]) -> dict | None:
    """The first decodable sample of the first source (what a placeholder should look like)."""
    for src in sources:
        for url in src.urls[:3]:
            for raw in shard_samples(url, _ignore):
                try:
                    return decode(raw)
                except BadSample:
                    continue
    return None


def _ignore(skip: Skip) -> None:
    """Skips while counting or peeking are not counted: the streams that read the samples count them."""


def split_for(items: list, index: int, parts: int, *, share_if_short: bool) -> list:
    """Items for part ``index`` of ``parts`` (strided). With fewer items than parts, every part gets
    all items when ``share_if_short`` (resampled training: no rank may be left empty), else its
    strided share, possibly empty."""
    if len(items) < parts and share_if_short:
        return list(items)
    return items[index::parts]
