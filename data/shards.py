"""The shard format: writing, reading and validating WebDataset tar shards of VQA samples.

One sample is ``{key}.jpg|jpeg|png|webp`` (the image) or ``{key}.npy`` (a precomputed feature
tensor, loaded without pickle) plus ``{key}.json`` with ``question`` (str), ``answers`` (list of
str), ``question_id`` and optionally ``image_id``, ``answer_type``, ``question_type`` and
``objects``: ``[{"box": [x0, y0, x1, y1], "named": bool}, ...]``, where the scene's objects are, each
box normalised to the original image's width and height (x to the right, y down), ``named`` whether
the question is about it. Shards are ``{prefix}-{000000..N}.tar``; each dataset directory has
``manifest.json`` with the sample count of every shard. See ``data/README.md``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import tarfile
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from arrcoc.data.features import lookup
from arrcoc.processing.files import write_text

log = logging.getLogger("arrcoc.data")

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
FEATURE_EXT = "npy"
MANIFEST = "manifest.json"


class BadSample(Exception):
    """A sample that cannot be used; ``reason`` is a short, countable category."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


# --------------------------------------------------------------------------------------------- schema
def validate_meta(meta: Any) -> dict[str, Any]:
    """Check a sample's json against the format; returns the normalised dict or raises BadSample."""
    if not isinstance(meta, dict):
        raise BadSample("bad_json", f"expected an object, got {type(meta).__name__}")
    q = meta.get("question")
    if not isinstance(q, str):
        raise BadSample("missing_field", "'question' must be a string")
    answers = meta.get("answers")
    if answers is None and isinstance(meta.get("answer"), str):
        answers = [meta["answer"]]
    if answers is not None and (not isinstance(answers, list) or not all(isinstance(a, str) for a in answers)):
        raise BadSample("missing_field", "'answers' must be a list of strings")
    if "question_id" not in meta:
        raise BadSample("missing_field", "'question_id' is required")
    out = {"question": q, "answers": answers or [], "question_id": meta["question_id"]}
    for opt in ("image_id", "answer_type", "question_type"):
        if meta.get(opt) is not None:
            out[opt] = meta[opt]
    objects = meta.get("objects")
    if objects is not None:  # [{"box": [x0, y0, x1, y1] normalised to the image, "named": bool}, ...]
        if not isinstance(objects, list):
            raise BadSample("bad_objects", f"'objects' must be a list, got {type(objects).__name__}")
        out["objects"] = []
        for i, obj in enumerate(objects):
            box = obj.get("box") if isinstance(obj, dict) else None
            if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
                raise BadSample("bad_objects", f"objects[{i}] must be {{'box': [x0, y0, x1, y1], 'named': bool}} "
                                f"with 4 numbers in box, got {obj!r}")
            x0, y0, x1, y1 = (float(v) for v in box)
            if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
                raise BadSample("bad_objects", f"objects[{i}].box={box!r} must have 0 <= x0 < x1 <= 1 and "
                                "0 <= y0 < y1 <= 1 (normalised to the image)")
            if not isinstance(obj.get("named"), bool):
                raise BadSample("bad_objects", f"objects[{i}].named must be true or false, got {obj.get('named')!r}")
            out["objects"].append({"box": [x0, y0, x1, y1], "named": obj["named"]})
    return out


# --------------------------------------------------------------------------------------------- writing
@dataclass
class ShardWriter:
    """Writes ``{prefix}-{i:06d}.tar`` shards of at most ``samples_per_shard`` samples, and the manifest.

    A shard is written under a temporary name and renamed only when complete, so an interrupted run
    never leaves a half-written shard under a final name; the manifest lists complete shards only.
    Member mtimes are fixed, so the same samples give byte-identical shards.
    """

    out_dir: Path
    prefix: str = "data"
    samples_per_shard: int = 1000
    shards: list[dict[str, Any]] = field(default_factory=list)
    _tar: tarfile.TarFile | None = None
    _tmp: Path | None = None
    _count: int = 0
    manifest: dict[str, Any] | None = None  # set by close()

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        if self.samples_per_shard < 1:
            raise ValueError(f"samples_per_shard={self.samples_per_shard} must be >= 1")
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        self._tar.addfile(info, io.BytesIO(data))

    def write(self, key: str, meta: dict[str, Any], image: bytes | None = None, image_ext: str = "jpg",
              features: np.ndarray | None = None) -> None:
        """One sample: its json, and an encoded image or a feature array — or its json alone, when it
        names its image's row in the directory's feature cache (``meta["feature_index"]``, see
        :mod:`arrcoc.data.features`)."""
        if "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} must not contain '.' or '/'")
        if "feature_index" in meta:
            if image is not None or features is not None:
                raise ValueError("a feature_index sample carries no image and no feature array")
        elif (image is None) == (features is None):
            raise ValueError("a sample needs exactly one of image bytes or a feature array (or a feature_index)")
        validate_meta(meta)
        if self._tar is None:
            name = f"{self.prefix}-{len(self.shards):06d}.tar"
            self._tmp = self.out_dir / f".{name}.{uuid.uuid4().hex[:8]}.tmp"  # unique: writers may race
            self._tar = tarfile.open(self._tmp, "w")
            self._count = 0
        self._add(f"{key}.json", json.dumps(meta, sort_keys=True).encode())
        if image is not None:
            if image_ext not in IMAGE_EXTS:
                raise ValueError(f"image_ext={image_ext!r}; valid: {IMAGE_EXTS}")
            self._add(f"{key}.{image_ext}", image)
        elif features is not None:
            buf = io.BytesIO()
            np.save(buf, np.asarray(features), allow_pickle=False)
            self._add(f"{key}.{FEATURE_EXT}", buf.getvalue())
        self._count += 1
        if self._count >= self.samples_per_shard:
            self._finish_shard()

    def _finish_shard(self) -> None:
        self._tar.close()
        final = self.out_dir / f"{self.prefix}-{len(self.shards):06d}.tar"
        os.replace(self._tmp, final)
        self.shards.append({"name": final.name, "samples": self._count})
        self._tar = self._tmp = None

    def close(self) -> dict[str, Any]:
        if self._tar is not None:
            self._finish_shard()
        manifest = {"format": "arrcoc-vqa/1", "shards": self.shards,
                    "total": sum(s["samples"] for s in self.shards)}
        write_text(self.out_dir / MANIFEST, json.dumps(manifest, indent=1))  # atomically, beside it
        self.manifest = manifest
        return manifest

    def abort(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tmp.unlink(missing_ok=True)
            self._tar = self._tmp = None


def encode_image(img: Image.Image, ext: str = "png", quality: int = 95) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format={"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}[ext], quality=quality)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------- reading
@dataclass
class RawSample:
    """A tar sample before decoding: member bytes by extension."""

    key: str
    url: str
    files: dict[str, bytes]


@dataclass
class Skip:
    """A skipped sample (or shard): where, and why."""

    url: str
    key: str
    reason: str
    detail: str = ""


def iter_tar(url: str) -> Iterator[RawSample | Skip]:
    """Stream a tar shard (a path or any ``webdataset.gopen`` URL such as ``pipe:CMD``) as samples.

    Members are grouped by key with webdataset's own rule (``base_plus_ext``: the name up to the
    first '.' of its last path part, folders included); hidden files (``.DS_Store``, also inside a
    folder) are ignored. One RawSample per key, so a sample position is never lost. A shard that
    can't be opened, or breaks off mid-stream, yields a shard-level :class:`Skip` (key ``"*"``)
    instead of raising; what was read before the break still comes out, a member cut off by the
    break marked ``__broken__`` (a sample that :func:`decode` counts as ``unreadable_member``).
    Most callers want :func:`shard_samples`.
    """
    from webdataset.gopen import gopen
    from webdataset.tariterators import base_plus_ext

    try:
        stream = gopen(url, "rb")
    except Exception as err:  # noqa: BLE001 - any failure to open is a skipped shard
        yield Skip(url, "*", "unreadable_shard", str(err))
        return
    current: RawSample | None = None
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                if member.name.rsplit("/", 1)[-1].startswith("."):
                    continue
                key, ext = base_plus_ext(member.name)  # "00000/000000001.seg.png" -> ("00000/000000001", "seg.png")
                if key is None:  # no extension: not a sample member
                    continue
                if current is None or current.key != key:
                    if current is not None:
                        yield current
                    current = RawSample(key, url, {})
                try:
                    data = tar.extractfile(member).read()
                except Exception as err:  # noqa: BLE001 - decode() turns this into a counted skip
                    current.files["__broken__"] = f"{member.name}: {err}".encode()
                    continue
                if len(data) != member.size:  # the archive ends inside this member
                    current.files["__broken__"] = f"{member.name}: truncated".encode()
                    raise tarfile.ReadError(f"archive ends inside {member.name}")
                current.files[ext.lower()] = data
    except Exception as err:  # noqa: BLE001 - truncated or corrupt archive: keep what was read
        yield Skip(url, "*", "unreadable_shard", str(err))
    finally:
        close = getattr(stream, "close", None)
        if close:
            try:
                close()
            except Exception:  # noqa: BLE001 - a pipe's exit status is reported above if it matters
                pass
    if current is not None:
        yield current


def shard_samples(url: str, on_skip: Callable[[Skip], None]) -> Iterator[RawSample]:
    """A shard's samples, undecoded: every :class:`Skip` goes to ``on_skip`` (e.g. a ``SkipCounter``),
    stray files (:func:`is_sample`) are dropped. The one loop over :func:`iter_tar` all readers use."""
    for item in iter_tar(url):
        if isinstance(item, Skip):
            on_skip(item)
        elif is_sample(item):
            yield item


def is_sample(raw: RawSample) -> bool:
    """Whether a key group is a sample at all (has json, an image or features): a stray file such as
    ``README.txt`` in a shard is not, and takes no sample position."""
    return any(ext in raw.files for ext in ("json", FEATURE_EXT, "__broken__", *IMAGE_EXTS))


def _open_image(data: bytes) -> Image.Image:
    """Decode an image; refuse decompression bombs; apply EXIF orientation; 16/32-bit to 8-bit."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        img = Image.open(io.BytesIO(data))
        img.load()
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / hi * 255.0, 0, 255).astype(np.uint8), "L")
    return img


def decode(raw: RawSample) -> dict[str, Any]:
    """RawSample -> dict with ``image`` (PIL) or ``features`` (ndarray; and ``cls_features`` from a feature
    cache whose encoder has a class token), plus the json fields.

    Only images, json and ``.npy`` (without pickle) are decoded; any other payload (``.pth``,
    ``.pickle``, ...) is ignored, never loaded. Raises BadSample with a countable reason.
    """
    if "__broken__" in raw.files:
        raise BadSample("unreadable_member", raw.files["__broken__"].decode(errors="replace"))
    if "json" not in raw.files:
        raise BadSample("missing_json")
    try:
        meta = json.loads(raw.files["json"].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadSample("bad_json", str(err)) from err
    out = validate_meta(meta)
    out["__key__"], out["__url__"] = raw.key, raw.url
    ext = next((e for e in IMAGE_EXTS if e in raw.files), None)
    if ext is not None:
        try:
            out["image"] = _open_image(raw.files[ext])
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
            raise BadSample("image_too_large", str(err)) from err
        except Exception as err:  # noqa: BLE001 - PIL raises many types for corrupt data
            # PIL names the buffer it read (``<_io.BytesIO object at 0x...>``), which says nothing: the
            # skip's log line names the shard and the key; the detail says what the bytes were.
            detail = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "the image", str(err))
            raise BadSample("bad_image", f"{ext} ({len(raw.files[ext])} bytes): {detail}") from err
    elif FEATURE_EXT in raw.files:
        try:
            out["features"] = np.load(io.BytesIO(raw.files[FEATURE_EXT]), allow_pickle=False)
        except Exception as err:  # noqa: BLE001
            raise BadSample("bad_features", str(err)) from err
    elif "feature_index" in meta:  # its image's row in the directory's feature cache
        try:
            out["features"], cls = lookup(raw.url, meta["feature_index"])
        except LookupError as err:
            raise BadSample("bad_features", str(err)) from err
        if cls is not None:
            out["cls_features"] = cls
    else:
        raise BadSample("missing_image")
    return out


def read_manifest(directory: str | Path) -> dict[str, Any] | None:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
            raise ValueError("expected an object with a 'shards' list")
        for entry in manifest["shards"]:
            if not (isinstance(entry, dict) and isinstance(entry.get("name"), str)
                    and isinstance(entry.get("samples"), int)):
                raise ValueError(f"each shard entry needs 'name' (str) and 'samples' (int), got {entry!r}"[:200])
    except (OSError, UnicodeDecodeError, ValueError) as err:  # JSONDecodeError is a ValueError
        raise ValueError(f"{path} is not a readable manifest ({err}); expected {{\"shards\": [{{\"name\": "
                         "\"data-000000.tar\", \"samples\": N}, ...], \"total\": N}: rewrite it, or delete it "
                         "to count samples by reading the shards") from None
    return manifest
