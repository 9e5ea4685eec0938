"""Converters from common VQA layouts to shards: VQAv2's official JSON, and JSON Lines manifests."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arrcoc.data.shards import IMAGE_EXTS, MANIFEST, BadSample, ShardWriter, validate_meta

log = logging.getLogger("arrcoc.data")

OUTSIDE_ROOT = "outside_images_root"  # skip reason: an image that resolves outside the images directory
LOGGED_PER_REASON = 5  # skips logged one by one per reason; the rest are counted in the summary


def _counts(counter: Counter) -> str:
    return ", ".join(f"{n} {r}" for r, n in sorted(counter.items()))


@dataclass
class ConvertReport:
    written: int = 0
    skipped: Counter = field(default_factory=Counter)
    coerced: Counter = field(default_factory=Counter)  # values coerced in the written samples, by kind
    manifest: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        text = (f"wrote {self.written} samples in {len(self.manifest.get('shards', []))} shards; "
                f"skipped {sum(self.skipped.values())} ({_counts(self.skipped) or 'none'})")
        return text + (f"; coerced {sum(self.coerced.values())} ({_counts(self.coerced)})" if self.coerced else "")

    def nothing_written(self, source: Path | str) -> str:
        """Why a conversion that wrote nothing failed, naming its input."""
        if not self.skipped:
            return f"nothing written: {source} holds no samples"
        return (f"nothing written: all {sum(self.skipped.values())} samples of {source} were skipped "
                f"({_counts(self.skipped)}); see the warnings above")


@dataclass
class Item:
    """One sample to write: its json and where its image is; ``objects`` with boxes in the image's
    pixels, normalised into ``meta`` once the image's size is known (see :func:`pixel_objects`)."""

    key: str
    meta: dict[str, Any]
    image: Path
    objects: list[dict[str, Any]] | None = None
    coerced: tuple[str, ...] = ()  # kinds of values coerced to fit the format, counted when written


def prepare_out_dir(out: Path, prefix: str, overwrite: bool) -> None:
    """Refuse to mix a new dataset into an old one unless asked; with ``overwrite`` remove the old."""
    out.mkdir(parents=True, exist_ok=True)
    old = sorted(out.glob(f"{prefix}-*.tar")) + ([out / MANIFEST] if (out / MANIFEST).exists() else [])
    if old and not overwrite:
        raise FileExistsError(f"--out {out} already holds a dataset ({old[0].name}, ...); "
                              "pass --overwrite to replace it or choose another directory")
    for path in old:
        path.unlink()


def write_items(items: Iterable[Item | tuple[str, ...]], out: Path, prefix: str, samples_per_shard: int,
                total: int | None = None, progress: bool = True) -> ConvertReport:
    """Write items (or ``(key, reason[, detail])`` skips found while listing them) as shards; count what
    is skipped."""
    from tqdm import tqdm

    report = ConvertReport()
    with ShardWriter(out, prefix=prefix, samples_per_shard=samples_per_shard) as writer:
        for item in tqdm(items, total=total, desc=f"writing {prefix}", unit="sample", disable=not progress,
                         mininterval=1.0):
            if isinstance(item, tuple):
                _skip(report, *item)
                continue
            ext = item.image.suffix.lower().lstrip(".")
            if ext not in IMAGE_EXTS:
                _skip(report, item.key, "unsupported_image_type", str(item.image))
                continue
            try:
                data = item.image.read_bytes()
                _check_image(data)
            except FileNotFoundError:
                _skip(report, item.key, "missing_image", str(item.image))
                continue
            except BadSample as err:
                _skip(report, item.key, err.reason, f"{item.image}: {err}")
                continue
            meta = item.meta
            if item.objects is not None:
                try:
                    meta = validate_meta({**meta, "objects": pixel_objects(item.objects, _image_size(data))})
                except BadSample as err:
                    _skip(report, item.key, err.reason, f"{item.image}: {str(err).removeprefix(err.reason + ': ')}")
                    continue
            writer.write(item.key, meta, image=data, image_ext=ext)
            report.written += 1
            report.coerced.update(item.coerced)
    report.manifest = writer.manifest
    return report


def _check_image(data: bytes) -> None:
    import io

    from PIL import Image

    try:
        Image.open(io.BytesIO(data)).verify()
    except Exception as err:  # noqa: BLE001
        raise BadSample("bad_image", str(err)) from err


def _image_size(data: bytes) -> tuple[int, int]:
    """(W, H) of the image as readers decode it: with its EXIF orientation applied."""
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(data))
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - unreadable EXIF: readers keep the stored orientation too
        orientation = 1
    return img.size[::-1] if orientation in (5, 6, 7, 8) else img.size


def pixel_objects(objects: Any, image_size: tuple[int, int] | None = None) -> list[dict[str, Any]]:
    """``[{"box": [x0, y0, x1, y1] in pixels, "named": bool}, ...]`` -> boxes normalised by
    ``image_size`` (W, H), the shard format's ``objects``. Without ``image_size`` only the form is
    checked (and the objects come back as given). Raises ``BadSample("bad_objects", ...)``."""
    if not isinstance(objects, list):
        raise BadSample("bad_objects", f"'objects' must be a list, got {type(objects).__name__}")
    out = []
    for i, obj in enumerate(objects):
        box = obj.get("box") if isinstance(obj, dict) else None
        if not isinstance(box, list) or len(box) != 4 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
            raise BadSample("bad_objects", f"objects[{i}] must be {{'box': [x0, y0, x1, y1], 'named': bool}} "
                            f"with 4 numbers in box, got {obj!r}")
        if not isinstance(obj.get("named"), bool):
            raise BadSample("bad_objects", f"objects[{i}].named must be true or false, got {obj.get('named')!r}")
        x0, y0, x1, y1 = box
        if not (0 <= x0 < x1 and 0 <= y0 < y1):
            raise BadSample("bad_objects", f"objects[{i}].box={box!r} must have 0 <= x0 < x1 and 0 <= y0 < y1 (pixels)")
        if image_size is None:
            out.append(obj)
            continue
        w, h = image_size
        if x1 > w or y1 > h:
            raise BadSample("bad_objects", f"objects[{i}].box={box!r} reaches outside the {w}x{h} image (pixels)")
        out.append({"box": [x0 / w, y0 / h, x1 / w, y1 / h], "named": obj["named"]})
    return out


def _skip(report: ConvertReport, key: str, reason: str, detail: str = "") -> None:
    report.skipped[reason] += 1
    if report.skipped[reason] <= LOGGED_PER_REASON:
        log.warning("skipping %s: %s %s", key, reason, detail)
    elif report.skipped[reason] == LOGGED_PER_REASON + 1:
        log.warning("more %s skips: counted in the summary, not logged one by one", reason)


def _outside(path: Path, root: Path) -> str | None:
    """Why ``path`` is not inside ``root`` (already resolved) once symlinks and ``..`` are resolved;
    None when it is inside."""
    try:
        real = path.resolve()
    except (OSError, RuntimeError) as err:  # a symlink loop
        return f"cannot be resolved ({err})"
    return None if real.is_relative_to(root) else f"resolves to {real}"


# --------------------------------------------------------------------------------------------- VQAv2
def vqav2_items(questions: Path, annotations: Path | None, images: Path,
                allow_outside_root: bool = False) -> tuple[Iterator, int]:
    """Items from the official VQAv2 files (``v2_OpenEnded_mscoco_*_questions.json``,
    ``v2_mscoco_*_annotations.json``; images ``COCO_{split}_{image_id:012d}.jpg`` under ``images``).
    An image found under ``images`` that is a symlink resolving outside it is skipped
    (``outside_images_root``) unless ``allow_outside_root``."""
    qdata = json.loads(Path(questions).read_text())
    qs = qdata["questions"]
    subtype = qdata.get("data_subtype")  # e.g. "val2014"
    answers: dict[int, dict] = {}
    if annotations is not None:
        adata = json.loads(Path(annotations).read_text())
        answers = {a["question_id"]: a for a in adata["annotations"]}
    by_id = _index_images(images)
    root = Path(images).resolve()
    outside = {} if allow_outside_root else {
        i: why for i, p in by_id.items() if (why := _outside(p, root)) is not None}

    def gen() -> Iterator[Item | tuple[str, ...]]:
        for q in qs:
            key = f"q{q['question_id']}"
            image = by_id.get(q["image_id"])
            if image is None:
                yield key, "missing_image"
                continue
            if q["image_id"] in outside:
                yield (key, OUTSIDE_ROOT, f"image {image} {outside[q['image_id']]}, outside --images {root}; "
                       "pass --allow-outside-root to write it")
                continue
            meta: dict[str, Any] = {"question": q["question"], "question_id": q["question_id"],
                                    "image_id": q["image_id"], "answers": []}
            ann = answers.get(q["question_id"])
            if annotations is not None:
                if ann is None:
                    yield key, "missing_annotation"
                    continue
                meta["answers"] = [a["answer"] for a in ann["answers"]]
                meta["answer_type"] = ann.get("answer_type")
                meta["question_type"] = ann.get("question_type")
                meta["multiple_choice_answer"] = ann.get("multiple_choice_answer")
            yield Item(key, {k: v for k, v in meta.items() if v is not None}, image)

    if subtype:
        log.info("VQAv2 %s: %d questions", subtype, len(qs))
    return gen(), len(qs)


def _index_images(root: Path) -> dict[int, Path]:
    """image_id -> path, from COCO-style names (``..._000000123456.jpg``) or plain ``123456.jpg``."""
    out: dict[int, Path] = {}
    for path in Path(root).rglob("*"):
        if path.suffix.lower().lstrip(".") in IMAGE_EXTS:
            digits = path.stem.rsplit("_", 1)[-1]
            if digits.isdigit():
                out[int(digits)] = path
    return out


# --------------------------------------------------------------------------------------------- JSONL
def _got(value: Any) -> str:
    """``int 42``, ``str "yes"``, ``null``: a JSON value's type and (shortened) text, for skip details."""
    text = json.dumps(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    return text if value is None else f"{type(value).__name__} {text}"


def _answer(value: Any, name: str) -> tuple[str, bool]:
    """An answer as a string, and whether it was a JSON integer written as its decimal string."""
    if isinstance(value, str):
        return value, False
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value), True
    raise BadSample("bad_field", f"{name} must be a string, got {_got(value)}")


def jsonl_meta(rec: Any) -> tuple[dict[str, Any], list[str]]:
    """One JSONL record -> (shard json without ``question_id``, kinds of values coerced). Every field is
    type-checked; raises ``BadSample`` whose reason is ``bad_json`` (not an object), ``missing_field``
    or ``bad_field``, and whose detail names the field. A JSON integer answer (``42``) is written as
    its decimal string (``"42"``); floats, booleans and other types are refused. ``null`` is the field
    left out."""
    if not isinstance(rec, dict):
        raise BadSample("bad_json", f"expected a JSON object, got {_got(rec)}")
    for name in ("image", "question"):
        if rec.get(name) is None:
            raise BadSample("missing_field", f"{name!r} is required")
        if not isinstance(rec[name], str):
            raise BadSample("bad_field", f"{name!r} must be a string, got {_got(rec[name])}")
    if not rec["image"]:
        raise BadSample("bad_field", "'image' must name a file, got an empty string")
    meta: dict[str, Any] = {"question": rec["question"]}
    coerced = []
    if rec.get("answers") is not None:
        if not isinstance(rec["answers"], list):
            raise BadSample("bad_field", f"'answers' must be a list of strings, got {_got(rec['answers'])}")
        meta["answers"] = []
        for i, a in enumerate(rec["answers"]):
            text, number = _answer(a, f"'answers'[{i}]")
            meta["answers"].append(text)
            coerced += ["number_answer"] if number else []
    if rec.get("answer") is not None:
        text, number = _answer(rec["answer"], "'answer'")
        if "answers" not in meta:  # both given: 'answers' is kept, as the shard format's field
            meta["answers"] = [text]
            coerced += ["number_answer"] if number else []
    for name, types in (("question_id", (int, str)), ("image_id", (int, str)), ("answer_type", str),
                        ("question_type", str)):
        value = rec.get(name)
        if value is None:
            continue
        if not isinstance(value, types) or isinstance(value, bool):
            want = "an integer or a string" if types == (int, str) else "a string"
            raise BadSample("bad_field", f"{name!r} must be {want}, got {_got(value)}")
        meta[name] = value
    return meta, coerced


def jsonl_items(manifest: Path, images_root: Path, allow_outside_root: bool = False) -> tuple[Iterator, int | None]:
    """Items from a JSON Lines file: ``image`` (relative to ``images_root``), ``question``,
    ``answers`` (list) or ``answer`` (str), optional ``question_id`` (defaults to the line number),
    optional ``objects`` (``[{"box": [x0, y0, x1, y1], "named": bool}, ...]``, boxes in the image's
    pixels; normalised by the image's size when written). Fields are checked as :func:`jsonl_meta`
    says. An ``image`` that resolves (``..``, an absolute path, symlinks) outside ``images_root`` is
    skipped as ``outside_images_root`` unless ``allow_outside_root``."""
    lines = Path(manifest).read_text().splitlines()
    root = Path(images_root)
    real_root = root.resolve()

    def gen() -> Iterator[Item | tuple[str, ...]]:
        warned_coercion = False
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            key = f"l{n:09d}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                yield key, "bad_json", f"(line {n}) {err}"
                continue
            try:
                meta, coerced = jsonl_meta(rec)
                meta.setdefault("question_id", n)
                meta = validate_meta(meta)
                objects = None if rec.get("objects") is None else pixel_objects(rec["objects"])
            except BadSample as err:
                yield key, err.reason, f"(line {n}) {str(err).removeprefix(err.reason + ': ')}"
                continue
            image = root / rec["image"]
            if not allow_outside_root and (why := _outside(image, real_root)) is not None:
                yield (key, OUTSIDE_ROOT, f"(line {n}) image {rec['image']!r} {why}, outside --images-root "
                       f"{real_root}; pass --allow-outside-root to write it")
                continue
            if coerced and not warned_coercion:
                warned_coercion = True
                log.warning("(line %d) a number answer is written as its decimal string (%s); further ones are "
                            "counted in the summary (coerced ... number_answer), not logged", n, meta["answers"])
            yield Item(key, meta, image, objects, tuple(coerced))

    return gen(), sum(1 for line in lines if line.strip())
