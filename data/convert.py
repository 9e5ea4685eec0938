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


@dataclass
class ConvertReport:
    written: int = 0
    skipped: Counter = field(default_factory=Counter)
    manifest: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(self.skipped.items())) or "none"
        return (f"wrote {self.written} samples in {len(self.manifest.get('shards', []))} shards; "
                f"skipped {sum(self.skipped.values())} ({reasons})")


@dataclass
class Item:
    """One sample to write: its json and where its image is."""

    key: str
    meta: dict[str, Any]
    image: Path


def prepare_out_dir(out: Path, prefix: str, overwrite: bool) -> None:
    """Refuse to mix a new dataset into an old one unless asked; with ``overwrite`` remove the old."""
    out.mkdir(parents=True, exist_ok=True)
    old = sorted(out.glob(f"{prefix}-*.tar")) + ([out / MANIFEST] if (out / MANIFEST).exists() else [])
    if old and not overwrite:
        raise FileExistsError(f"--out {out} already holds a dataset ({old[0].name}, ...); "
                              "pass --overwrite to replace it or choose another directory")
    for path in old:
        path.unlink()


def write_items(items: Iterable[Item | tuple[str, str]], out: Path, prefix: str, samples_per_shard: int,
                total: int | None = None, progress: bool = True) -> ConvertReport:
    """Write items (or ``(key, reason)`` skips found while listing them) as shards; count what is skipped."""
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
            writer.write(item.key, item.meta, image=data, image_ext=ext)
            report.written += 1
    report.manifest = writer.manifest
    return report


def _check_image(data: bytes) -> None:
    import io

    from PIL import Image

    try:
        Image.open(io.BytesIO(data)).verify()
    except Exception as err:  # noqa: BLE001
        raise BadSample("bad_image", str(err)) from err


def _skip(report: ConvertReport, key: str, reason: str, detail: str = "") -> None:
    report.skipped[reason] += 1
    if report.skipped[reason] <= 5:
        log.warning("skipping %s: %s %s", key, reason, detail)


# --------------------------------------------------------------------------------------------- VQAv2
def vqav2_items(questions: Path, annotations: Path | None, images: Path) -> tuple[Iterator, int]:
    """Items from the official VQAv2 files (``v2_OpenEnded_mscoco_*_questions.json``,
    ``v2_mscoco_*_annotations.json``; images ``COCO_{split}_{image_id:012d}.jpg`` under ``images``)."""
    qdata = json.loads(Path(questions).read_text())
    qs = qdata["questions"]
    subtype = qdata.get("data_subtype")  # e.g. "val2014"
    answers: dict[int, dict] = {}
    if annotations is not None:
        adata = json.loads(Path(annotations).read_text())
        answers = {a["question_id"]: a for a in adata["annotations"]}
    by_id = _index_images(images)

    def gen() -> Iterator[Item | tuple[str, str]]:
        for q in qs:
            key = f"q{q['question_id']}"
            image = by_id.get(q["image_id"])
            if image is None:
                yield key, "missing_image"
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
def jsonl_items(manifest: Path, images_root: Path) -> tuple[Iterator, int | None]:
    """Items from a JSON Lines file: ``image`` (relative to ``images_root``), ``question``,
    ``answers`` (list) or ``answer`` (str), optional ``question_id`` (defaults to the line number)."""
    lines = Path(manifest).read_text().splitlines()

    def gen() -> Iterator[Item | tuple[str, str]]:
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            key = f"l{n:09d}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                yield key, "bad_json"
                continue
            if not isinstance(rec, dict) or not isinstance(rec.get("image"), str):
                yield key, "missing_field"
                continue
            meta = {k: rec[k] for k in ("question", "answers", "answer", "image_id", "answer_type", "question_type")
                    if k in rec}
            meta["question_id"] = rec.get("question_id", n)
            try:
                meta = validate_meta(meta)
            except BadSample as err:
                yield key, err.reason
                continue
            yield Item(key, meta, Path(images_root) / rec["image"])

    return gen(), sum(1 for line in lines if line.strip())


