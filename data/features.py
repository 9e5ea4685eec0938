"""The frozen-encoder feature cache: features stored once per image, questions streamed as shards.

A cache directory (written by ``arrcoc data cache-features``) holds

- ``features.npy``: ``[images, N, D]`` patch features, one row per distinct image (``float16``, or
  ``bfloat16`` kept as its raw 16-bit patterns, or ``float32``), memory-mapped when read;
- ``cls.npy``: ``[images, D]`` class-token features, where the encoder has a class token;
- ``features.json``: what made them (:class:`FeatureStamp`: encoder name, pretrained tag, layer, the image
  transform, dtype, shapes) — a cache made by another encoder or settings is refused by what reads it;
- shards and ``manifest.json`` as usual, one sample per question: its json plus ``feature_index``, the row
  of its image. No pixels.

Questions stay one sample each, so every stream invariant (positions, manifests, rank splits, resume) holds
unchanged; only the image is shared. VQAv2 has about 5.4 questions per image: at EVA02-L's 576x1024 in
float16 that is about 98 GB for its training split instead of about 520 GB stored per question.
The store is read by memory map, so it must sit on a file system (local or shared), not behind ``pipe:``.
"""

from __future__ import annotations

import functools
import json
import os
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from arrcoc.processing.files import write_text

FEATURES_JSON = "features.json"
PATCH_STORE = "features.npy"
CLS_STORE = "cls.npy"
FORMAT = "arrcoc-features/1"
DTYPES = ("float16", "bfloat16", "float32")


@dataclass(frozen=True)
class FeatureStamp:
    """What a feature cache was made with; a reader compares the fields that decide the features."""

    encoder: str
    pretrained: str | None
    layer: int  # the block whose output is stored, counted from 0
    transform: str  # the image transform's repr: size, crop, normalisation
    dtype: str
    patches: int  # N
    width: int  # D
    has_cls: bool
    images: int
    questions: int
    format: str = FORMAT

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FeatureStamp:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def is_cache(directory: str | Path) -> bool:
    return (Path(directory) / FEATURES_JSON).is_file()


def read_stamp(directory: str | Path) -> FeatureStamp:
    path = Path(directory) / FEATURES_JSON
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"feature cache {directory}: cannot read {FEATURES_JSON} ({err}); remake it with "
                         "`arrcoc data cache-features`") from err
    if data.get("format") != FORMAT:
        raise ValueError(f"feature cache {directory}: format {data.get('format')!r}, expected {FORMAT!r}; remake it "
                         "with `arrcoc data cache-features`")
    return FeatureStamp.from_json(data)


def check_stamp(directory: str | Path, expected: dict[str, Any]) -> FeatureStamp:
    """The cache's stamp, or a ValueError naming every field that differs from ``expected`` (e.g.
    ``{"encoder": ..., "pretrained": ...}``): features from another encoder would be silently wrong."""
    stamp = read_stamp(directory)
    have = stamp.to_json()
    wrong = [f"{k}={have[k]!r} (this run: {v!r})" for k, v in expected.items() if have.get(k) != v]
    if wrong:
        raise ValueError(f"feature cache {directory} was made with other settings: {', '.join(wrong)}. Remake it "
                         "with `arrcoc data cache-features --config <this run's config>` or point the data at images")
    return stamp


class FeatureStoreWriter:
    """Fills ``features.npy`` (and ``cls.npy``) row by row, under temporary names in the destination
    directory; :meth:`close` renames them into place and writes ``features.json`` last, so a cache is
    either complete or not a cache at all (no ``features.json``)."""

    def __init__(self, out_dir: str | Path, images: int, patches: int, width: int, has_cls: bool, dtype: str) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r}; valid: {DTYPES}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.dtype = dtype
        tag = uuid.uuid4().hex[:8]
        stored = np.uint16 if dtype == "bfloat16" else np.dtype(dtype)
        self._tmp = {PATCH_STORE: self.out_dir / f".{PATCH_STORE}.{tag}.tmp"}
        self.patches = np.lib.format.open_memmap(self._tmp[PATCH_STORE], mode="w+", dtype=stored,
                                                 shape=(images, patches, width))  # [I, N, D]
        self.cls = None
        if has_cls:
            self._tmp[CLS_STORE] = self.out_dir / f".{CLS_STORE}.{tag}.tmp"
            self.cls = np.lib.format.open_memmap(self._tmp[CLS_STORE], mode="w+", dtype=stored,
                                                 shape=(images, width))  # [I, D]

    def put(self, rows: np.ndarray, patches: np.ndarray, cls: np.ndarray | None) -> None:
        """Rows ``rows`` [b] get float32 patch features [b, N, D] (and class tokens [b, D])."""
        self.patches[rows] = to_stored(patches, self.dtype)
        if self.cls is not None:
            self.cls[rows] = to_stored(cls, self.dtype)

    def close(self, stamp: FeatureStamp) -> None:
        for store in (self.patches, self.cls):
            if store is not None:
                store.flush()
        del self.patches, self.cls
        for final, tmp in self._tmp.items():
            os.replace(tmp, self.out_dir / final)
        write_text(self.out_dir / FEATURES_JSON, json.dumps(stamp.to_json(), indent=1))  # last: the cache exists

    def abort(self) -> None:
        self.patches = self.cls = None
        for tmp in self._tmp.values():
            tmp.unlink(missing_ok=True)


def to_stored(x: np.ndarray, dtype: str) -> np.ndarray:
    """float32 -> the storage dtype; bfloat16 as its upper 16 bits, rounded to nearest even."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if dtype != "bfloat16":
        return x.astype(dtype)
    bits = x.view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    return ((bits + rounding) >> 16).astype(np.uint16)


def to_float32(x: np.ndarray, dtype: str) -> np.ndarray:
    """Stored features -> float32 (a copy, so nothing holds on to the memory map)."""
    if dtype == "bfloat16":
        return (np.asarray(x, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
    return np.array(x, dtype=np.float32)


@functools.lru_cache(maxsize=16)
def _open(directory: str) -> tuple[FeatureStamp, np.ndarray, np.ndarray | None]:
    """A cache's stamp and memory-mapped stores, opened once per process (each loader worker maps its own)."""
    stamp = read_stamp(directory)
    patches = np.load(os.path.join(directory, PATCH_STORE), mmap_mode="r")
    cls = np.load(os.path.join(directory, CLS_STORE), mmap_mode="r") if stamp.has_cls else None
    return stamp, patches, cls


def lookup(shard_url: str, index: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """The features of row ``index`` of the cache that holds shard ``shard_url``: (patches [N, D], cls [D]
    or None), float32. Raises LookupError with what is wrong (no cache there, or no such row)."""
    directory = os.path.dirname(os.path.abspath(shard_url))
    if not is_cache(directory):
        raise LookupError(f"a feature_index sample, but {directory} holds no {FEATURES_JSON}")
    stamp, patches, cls = _open(directory)
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < patches.shape[0]:
        raise LookupError(f"feature_index={index!r}; valid: an integer in 0..{patches.shape[0] - 1}")
    return (to_float32(patches[index], stamp.dtype),
            None if cls is None else to_float32(cls[index], stamp.dtype))
