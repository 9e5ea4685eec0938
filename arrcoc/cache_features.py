"""``arrcoc data cache-features``: run the frozen encoder once and write a feature cache.

Phases 1 and 2 keep the encoder frozen, so its output for an image never changes: computing it once
takes the encoder out of every later step (and epoch). The cache stores each distinct image's features
once (samples with the same ``image_id`` share them; without one, each sample is its own image) and keeps
every question a sample of its own (see :mod:`arrcoc.data.features` for the layout). Point a phase's
``data.train``/``data.val`` at the output (``configs/features/``) and the model skips the encoder.

The encoder (name, weights, layer) and the image transform come from the run's config, so the cache fits
the run that will read it; the data module and the phase refuse one made with other settings.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from arrcoc.console import console_logging, quiet_libraries
from arrcoc.data.features import DTYPES, FeatureStamp, FeatureStoreWriter, is_cache
from arrcoc.data.shards import BadSample, ShardWriter, Skip, decode, read_manifest, shard_samples
from arrcoc.data.sources import resolve
from arrcoc.data.stats import SkipCounter
from arrcoc.encoder import VisionEncoder
from arrcoc.presets import TINY_ENCODER
from arrcoc.processing import build_transform, crop_geometry

log = logging.getLogger("arrcoc")


def encoder_spec(configs: list[str]) -> dict[str, Any]:
    """The encoder's ``name``, ``pretrained`` and ``layer`` as the layered phase configs set them
    (``model.init_args.model.init_args.encoder``: a name or ``class_path`` + ``init_args``); defaults
    where a config is silent, as ``VisionEncoder`` has them."""
    merged: dict[str, Any] = {}
    for path in configs:
        _merge(merged, yaml.safe_load(Path(path).read_text()) or {})
    node: Any = merged
    for key in ("model", "init_args", "model", "init_args", "encoder"):
        if key == "init_args" and isinstance(node, dict) and key not in node:
            continue  # the model given as its arguments alone, without class_path/init_args
        node = node.get(key) if isinstance(node, dict) else None
    spec = {"name": TINY_ENCODER, "pretrained": None, "layer": -2}
    if isinstance(node, str):
        spec["name"] = node
    elif isinstance(node, dict):
        spec.update({k: v for k, v in (node.get("init_args") or {}).items() if k in spec})
    return spec


def _merge(into: dict, layer: dict) -> None:
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _image_groups(urls: list[str]) -> dict[str, int]:
    """How many questions each image has (pass 1, json only): the row count of the store."""
    groups: dict[str, int] = {}
    for url in urls:
        for raw in shard_samples(url, lambda skip: None):  # pass 2 counts what is unreadable
            try:
                meta = json.loads(raw.files["json"])
            except (KeyError, ValueError):
                continue
            key = _group(meta, raw.key)
            groups[key] = groups.get(key, 0) + 1
    return groups


def _group(meta: dict, key: str) -> str:
    """Questions about the same image share its ``image_id``; without one a sample is its own image."""
    image_id = meta.get("image_id") if isinstance(meta, dict) else None
    return f"id:{image_id}" if image_id is not None else f"key:{key}"


def cache_features(configs: list[str], src: Path, out: Path, dtype: str = "float16", batch_size: int = 64,
                   device: str = "auto", samples_per_shard: int = 1000, workers: int = 2,
                   progress: bool = True) -> FeatureStamp:
    """Encode every image of the shards in ``src`` once and write the cache to ``out``; returns its stamp.
    ``workers`` loader processes decode and transform the images (0: in this process)."""
    from tqdm import tqdm

    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    if out.resolve() == src.resolve():
        raise ValueError(f"--out {out} is the input directory; write the cache to a directory of its own")
    if read_manifest(out) is not None or is_cache(out):
        raise ValueError(f"--out {out} already holds shards or a feature cache; remove it or choose another")
    spec = encoder_spec(configs)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    encoder = VisionEncoder(spec["name"], pretrained=spec["pretrained"], layer=spec["layer"]).to(dev).eval()
    transform = build_transform(spec["name"], spec["pretrained"])
    crop = crop_geometry(spec["name"], spec["pretrained"])
    source = resolve(str(src))
    groups = _image_groups(source.urls)
    log.info("cache-features: %d questions about %d images in %s; encoder %s (%s, layer %d) on %s",
             sum(groups.values()), len(groups), src, spec["name"], spec["pretrained"], encoder.layer, dev)
    prefix = os.path.basename(source.urls[0]).rsplit("-", 1)[0] if source.urls else "data"
    store = FeatureStoreWriter(out, len(groups), encoder.num_patches, encoder.width, encoder.has_cls, dtype)
    rows: dict[str, int] = {}
    pending: list[tuple[int, torch.Tensor]] = []
    skips = SkipCounter()
    questions = 0
    bar = tqdm(total=len(groups), desc="cache-features", unit="image", disable=not progress, mininterval=1.0)

    def flush() -> None:
        if not pending:
            return
        index = np.array([r for r, _ in pending])
        with torch.no_grad():
            enc = encoder(torch.stack([p for _, p in pending]).to(dev))  # [b, h, w, D]
        cls = None if enc.cls is None else enc.cls.float().cpu().numpy()  # [b, D]
        store.put(index, enc.flat().float().cpu().numpy(), cls)  # [b, N, D]
        bar.update(len(pending))
        pending.clear()

    loader = torch.utils.data.DataLoader(_Decoded(source.urls, transform), batch_size=None, num_workers=workers)
    try:
        with ShardWriter(out, prefix=prefix, samples_per_shard=samples_per_shard) as writer:
            for item in loader:
                if isinstance(item, Skip):
                    skips(item)
                    continue
                if item.group not in rows:  # a worker sends pixels with the first question of an image it meets
                    rows[item.group] = len(rows)
                    pending.append((rows[item.group], item.pixels))
                meta = _in_crop(item.meta, item.image_size, crop)
                meta["feature_index"] = rows[item.group]
                writer.write(item.key.replace("/", "_"), meta)
                questions += 1
                if len(pending) >= batch_size:
                    flush()
            flush()
        stamp = FeatureStamp(encoder=spec["name"], pretrained=spec["pretrained"], layer=encoder.layer,
                             transform=repr(transform), dtype=dtype, patches=encoder.num_patches, width=encoder.width,
                             has_cls=encoder.has_cls, images=len(rows), questions=questions)
        store.close(stamp)
    except BaseException:
        store.abort()
        raise
    finally:
        bar.close()
    if skips.counts:
        log.warning("cache-features: skipped %d samples (%s)", sum(skips.counts.values()), dict(skips.counts))
    return stamp


@dataclass
class _Item:
    """One question, decoded in a loader worker: its json, its image's group, and the transformed image where
    this worker meets the group first (``None`` after: the main process encodes each image once)."""

    url: str
    key: str
    meta: dict
    group: str
    image_size: tuple[int, int]
    pixels: torch.Tensor | None


class _Decoded(torch.utils.data.IterableDataset):
    """The shards' questions, decoded and transformed in loader workers (each takes every n-th shard, in order),
    with every unusable sample as its :class:`Skip`; the main process keeps the encoder busy."""

    def __init__(self, urls: list[str], transform) -> None:
        self.urls, self.transform = urls, transform

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        seen: set[str] = set()
        for url in self.urls[worker::workers]:
            shard_skips: list[Skip] = []
            for raw in shard_samples(url, shard_skips.append):
                yield from shard_skips
                shard_skips.clear()
                try:
                    sample = decode(raw)
                    meta = json.loads(raw.files["json"])
                    group = _group(meta, raw.key)
                    pixels = None if group in seen else _pixels(self.transform, sample)
                except BadSample as err:
                    yield Skip(raw.url, raw.key, err.reason, str(err))
                    continue
                seen.add(group)
                yield _Item(raw.url, raw.key, meta, group, sample["image"].size, pixels)
            yield from shard_skips


def _pixels(transform, sample: dict) -> torch.Tensor:
    if "image" not in sample:
        raise BadSample("not_an_image", "the input is already features; cache-features reads image shards")
    try:
        return transform(sample["image"])  # [3, S, S]
    except Exception as err:  # noqa: BLE001 - a decodable but unusable image
        raise BadSample("bad_image", f"transform failed: {err}") from err


def _in_crop(meta: dict, image_size: tuple[int, int], crop) -> dict:
    """Object boxes moved into the encoder's crop, where a feature sample's boxes live (a feature sample
    has no image size to map from); objects the crop cuts off entirely are dropped."""
    objects = meta.get("objects")
    if not objects:
        return meta
    boxes = crop([o["box"] for o in objects], image_size)
    kept = [{"box": b, "named": o["named"]} for b, o in zip(boxes, objects, strict=True) if b[0] < b[2] and b[1] < b[3]]
    return {**meta, "objects": kept}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="arrcoc data cache-features", description=__doc__.splitlines()[0])
    p.add_argument("--config", action="append", required=True,
                   help="the phase config(s) whose encoder and image transform to use (repeat for layers)")
    p.add_argument("--in", dest="src", type=Path, required=True, help="a directory of image shards (manifest.json)")
    p.add_argument("--out", type=Path, required=True, help="the cache directory to write")
    p.add_argument("--dtype", default="float16", choices=DTYPES, help="storage dtype (default float16)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    p.add_argument("--shard-size", type=int, default=1000, help="questions per output shard")
    p.add_argument("--workers", type=int, default=2, help="processes that decode and transform images (default 2)")
    args = p.parse_args(argv)
    for path in args.config:
        if not Path(path).is_file():
            p.error(f"--config {path} does not exist")
    if not args.src.is_dir():
        p.error(f"--in {args.src} is not a directory of shards")
    if args.batch_size < 1:
        p.error(f"--batch-size {args.batch_size} must be >= 1")
    if args.workers < 0:
        p.error(f"--workers {args.workers} must be >= 0")
    console_logging()
    quiet_libraries()
    t0 = time.perf_counter()
    try:
        stamp = cache_features(args.config, args.src, args.out, args.dtype, args.batch_size, args.device,
                               args.shard_size, args.workers)
    except ValueError as err:
        print(f"arrcoc data cache-features: {err}")
        return 2
    size = sum(f.stat().st_size for f in args.out.iterdir() if f.is_file())
    print(f"wrote {args.out}: {stamp.questions} questions, {stamp.images} images, {stamp.patches}x{stamp.width} "
          f"{stamp.dtype} features ({size / 2**20:.1f} MiB) in {time.perf_counter() - t0:.0f} s")
    return 0
