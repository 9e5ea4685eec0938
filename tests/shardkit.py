"""Helpers that build small shard fixtures (good and deliberately broken) for the data tests."""

from __future__ import annotations

import io
import json
import pickle
import tarfile
from pathlib import Path

from PIL import Image

from arrcoc.data.shards import encode_image


class Boom:
    """Unpickling this creates a marker file: proof that a payload was (wrongly) loaded."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def good_meta(i: int) -> dict:
    return {"question": f"What color is object {i}?", "answers": ["red"] * 7 + ["blue"] * 3, "question_id": i}


def png(i: int, size: int = 40) -> bytes:
    return encode_image(Image.new("RGB", (size, size), (i * 7 % 255, 100, 50)), "png")


def write_dataset(out: Path, counts: list[int], prefix: str = "data", start: int = 0) -> list[int]:
    """Shards of the given (uneven) sizes with question ids start, start+1, ..., and a manifest."""
    out.mkdir(parents=True, exist_ok=True)
    shards, ids, qid = [], [], start
    for s, n in enumerate(counts):
        name = f"{prefix}-{s:06d}.tar"
        with tarfile.open(out / name, "w") as tar:
            for _ in range(n):
                add_member(tar, f"s{qid:07d}.json", json.dumps(good_meta(qid)).encode())
                add_member(tar, f"s{qid:07d}.png", png(qid))
                ids.append(qid)
                qid += 1
        shards.append({"name": name, "samples": n})
    manifest = {"format": "arrcoc-vqa/1", "shards": shards, "total": sum(counts)}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return ids


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_broken_shard(path: Path, marker: str, start: int = 1000) -> dict[str, int]:
    """One shard mixing good samples with every kind of bad one; returns {key: question_id} of good ones."""
    good = {}
    with tarfile.open(path, "w") as tar:
        for j, kind in enumerate(["good", "corrupt_image", "good", "missing_json", "bad_json", "missing_field",
                                  "missing_image", "good", "pickle_only", "good"]):
            key, qid = f"b{j:04d}", start + j
            meta = good_meta(qid)
            if kind == "good":
                good[key] = qid
            if kind not in ("missing_json", "bad_json", "missing_field"):
                add_member(tar, f"{key}.json", json.dumps(meta).encode())
            if kind == "bad_json":
                add_member(tar, f"{key}.json", b"{not json")
            if kind == "missing_field":
                add_member(tar, f"{key}.json", json.dumps({"question": "q?"}).encode())
            if kind == "corrupt_image":
                add_member(tar, f"{key}.png", b"\x89PNG\r\n\x1a\n garbage")
            elif kind in ("good", "missing_json", "bad_json", "missing_field"):
                add_member(tar, f"{key}.png", png(qid))
            if kind in ("pickle_only", "good"):
                add_member(tar, f"{key}.pth", pickle.dumps(Boom(marker)))  # must never be loaded
    return good


def add_to_manifest(directory: Path, name: str, samples: int) -> None:
    """List an extra shard (e.g. a broken one) in a dataset's manifest."""
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["shards"].append({"name": name, "samples": samples})
    manifest["total"] += samples
    (directory / "manifest.json").write_text(json.dumps(manifest))
