import json
import tarfile

import numpy as np
import pytest
from shardkit import good_meta, png, write_broken_shard

from arrcoc.data.shards import BadSample, ShardWriter, decode, iter_tar, read_manifest
from arrcoc.data.stream import SkipCounter, decoded
from arrcoc.processing import majority_answer


def test_writer_round_trip_and_manifest(tmp_path):
    with ShardWriter(tmp_path, prefix="train", samples_per_shard=3) as w:
        for i in range(7):
            w.write(f"k{i}", good_meta(i), image=png(i), image_ext="png")
    manifest = read_manifest(tmp_path)
    assert [s["samples"] for s in manifest["shards"]] == [3, 3, 1] and manifest["total"] == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "manifest.json", "train-000000.tar", "train-000001.tar", "train-000002.tar"]
    samples = [decode(r) for url in sorted(tmp_path.glob("*.tar")) for r in iter_tar(str(url))]
    assert [s["question_id"] for s in samples] == list(range(7))
    assert samples[2]["answers"] == good_meta(2)["answers"] and samples[2]["image"].size == (40, 40)
    assert samples[0]["__url__"].endswith("train-000000.tar") and samples[0]["__key__"] == "k0"


def test_writer_is_deterministic_and_atomic(tmp_path):
    for d in ("a", "b"):
        with ShardWriter(tmp_path / d, samples_per_shard=10) as w:
            for i in range(4):
                w.write(f"k{i}", good_meta(i), image=png(i), image_ext="png")
    assert (tmp_path / "a/data-000000.tar").read_bytes() == (tmp_path / "b/data-000000.tar").read_bytes()

    with pytest.raises(RuntimeError, match="interrupted"):
        with ShardWriter(tmp_path / "c", samples_per_shard=2) as w:
            for i in range(3):
                w.write(f"k{i}", good_meta(i), image=png(i), image_ext="png")
            raise RuntimeError("interrupted")
    names = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert names == ["data-000000.tar"], "only the complete shard, no temp file, no manifest"


def test_writer_rejects_bad_input(tmp_path):
    w = ShardWriter(tmp_path)
    with pytest.raises(ValueError, match="must not contain"):
        w.write("a.b", good_meta(0), image=png(0))
    with pytest.raises(BadSample, match="question_id"):
        w.write("a", {"question": "q", "answers": []}, image=png(0))
    with pytest.raises(ValueError, match="exactly one"):
        w.write("a", good_meta(0))
    w.abort()


def test_features_round_trip_without_pickle(tmp_path):
    feats = np.random.rand(576, 8).astype(np.float16)
    with ShardWriter(tmp_path) as w:
        w.write("f0", good_meta(0), features=feats)
    (raw,) = list(iter_tar(str(tmp_path / "data-000000.tar")))
    assert np.array_equal(decode(raw)["features"], feats)
    raw.files["npy"] = raw.files["npy"].replace(b"'descr': '<f2'", b"'descr': '|O'")  # an object array
    with pytest.raises(BadSample, match="bad_features"):
        decode(raw)


def test_every_kind_of_bad_sample_is_skipped_and_counted(tmp_path):
    marker = tmp_path / "unpickled"
    good = write_broken_shard(tmp_path / "broken.tar", str(marker))
    skips = SkipCounter()
    out = [s for s in decoded(str(tmp_path / "broken.tar"), skips) if isinstance(s, dict)]
    assert {s["__key__"]: s["question_id"] for s in out} == good
    assert dict(skips.counts) == {"bad_image": 1, "missing_json": 1, "bad_json": 1, "missing_field": 1,
                                  "missing_image": 2}
    assert not marker.exists(), "a pickled payload was loaded"


def test_truncated_and_unreadable_shards(tmp_path):
    from PIL import Image

    from arrcoc.data.shards import encode_image

    noisy = encode_image(Image.effect_noise((120, 120), 80).convert("RGB"), "png")  # incompressible
    with ShardWriter(tmp_path, samples_per_shard=100) as w:
        for i in range(6):
            w.write(f"k{i}", good_meta(i), image=noisy, image_ext="png")
    data = (tmp_path / "data-000000.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: len(data) // 2])
    skips = SkipCounter()
    items = list(decoded(str(tmp_path / "cut.tar"), skips))
    ok = [i for i in items if isinstance(i, dict)]
    assert 1 <= len(ok) < 6 and [s["question_id"] for s in ok] == list(range(len(ok)))
    assert skips.counts["unreadable_shard"] == 1
    skips = SkipCounter()
    assert [type(i).__name__ for i in decoded(str(tmp_path / "nope.tar"), skips)] == ["Skip"]
    assert skips.counts["unreadable_shard"] == 1


def test_img2dataset_style_tar_is_readable(tmp_path):
    """Tars from other tools: keys in sub-folders, extra members (txt), jpg + json."""
    from PIL import Image
    from shardkit import add_member

    from arrcoc.data.shards import encode_image

    with tarfile.open(tmp_path / "00000.tar", "w") as tar:
        add_member(tar, "00000/000000001.jpg", encode_image(Image.new("RGB", (30, 20)), "jpg"))
        add_member(tar, "00000/000000001.txt", b"a caption")
        add_member(tar, "00000/000000001.json", json.dumps(good_meta(5) | {"url": "x"}).encode())
    (raw,) = list(iter_tar(str(tmp_path / "00000.tar")))
    sample = decode(raw)
    assert sample["question_id"] == 5 and sample["image"].size == (30, 20)


def test_majority_answer():
    assert majority_answer(["b", "a", "a", "b", "c"]) == "b"  # tie: first seen
    assert majority_answer(["x"] * 3 + ["y"] * 7) == "y" and majority_answer([]) == ""


def _raw_image(img, fmt="png", **save):
    import io

    from arrcoc.data.shards import RawSample

    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return RawSample("k", "u", {"json": json.dumps(good_meta(0)).encode(), fmt: buf.getvalue()})


def test_16_bit_and_exif_orientation():
    from PIL import Image

    ramp = Image.fromarray((np.arange(256 * 4, dtype=np.uint16).reshape(4, 256) * 64).astype(np.uint16))
    img = decode(_raw_image(ramp))["image"]
    assert img.mode == "L" and 250 <= np.asarray(img).max() <= 255 and np.asarray(img).min() == 0

    base = Image.new("RGB", (40, 20), (0, 0, 0))
    base.paste((255, 0, 0), (0, 0, 10, 20))  # red on the left
    exif = Image.Exif()
    exif[0x0112] = 3  # rotated 180 degrees
    out = np.asarray(decode(_raw_image(base, "jpeg", exif=exif))["image"])
    assert out[10, 35, 0] > 200 and out[10, 2, 0] < 60  # red is on the right once orientation is applied


def test_decompression_bombs_are_skipped(monkeypatch):
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    for side in (40, 100):  # 1.6x the limit (a warning in PIL) and 10x (an error)
        with pytest.raises(BadSample, match="image_too_large"):
            decode(_raw_image(Image.new("L", (side, side))))
