"""Converters and the ``arrcoc data`` commands, on fixture files the tests create."""

import json
import subprocess
import sys

import pytest
from PIL import Image

from arrcoc.data.cli import main as data_main
from arrcoc.data.convert import jsonl_meta
from arrcoc.data.shards import BadSample, decode, iter_tar, read_manifest


def _all(out):
    return [decode(r) for p in sorted(out.glob("*.tar")) for r in iter_tar(str(p))]


def make_vqav2(root, n_images=3, annotate=True):
    images = root / "val2014"
    images.mkdir(parents=True)
    for i in range(1, n_images + 1):
        Image.new("RGB", (64, 48), (i * 40, 0, 0)).save(images / f"COCO_val2014_{i:012d}.jpg")
    (images / f"COCO_val2014_{2:012d}.jpg").write_bytes(b"not a jpeg")  # image 2 is corrupt
    questions = [{"image_id": i, "question": f"What is in image {i}?", "question_id": i * 10 + k}
                 for i in range(1, n_images + 2) for k in range(2)]  # image n+1 does not exist
    (root / "q.json").write_text(json.dumps({"data_subtype": "val2014", "questions": questions}))
    anns = [{"question_id": q["question_id"], "image_id": q["image_id"], "answer_type": "other",
             "multiple_choice_answer": "cat",
             "answers": [{"answer": "cat" if j < 7 else "dog", "answer_id": j + 1} for j in range(10)]}
            for q in questions if q["question_id"] != 11]  # question 11 has no annotation
    (root / "a.json").write_text(json.dumps({"annotations": anns}))
    return root


def test_jsonl_objects_in_pixels_are_normalised(tmp_path, capsys, caplog):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (200, 100)).save(tmp_path / "img" / "wide.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 40 x 20, shown (and decoded) rotated: 20 x 40
    Image.new("RGB", (40, 20)).save(tmp_path / "img" / "turned.jpg", exif=exif)
    box = {"box": [20, 10, 120, 60], "named": True}
    lines = [
        {"image": "wide.png", "question": "q1", "answer": "a", "objects": [box, {"box": [0, 0, 200, 100],
                                                                                  "named": False}]},
        {"image": "turned.jpg", "question": "q2", "answer": "a", "objects": [{"box": [5, 30, 20, 40], "named": False}]},
        {"image": "wide.png", "question": "q3", "answer": "a"},  # no objects: none written
        {"image": "wide.png", "question": "q4", "answer": "a", "objects": {"box": [0, 0, 1, 1]}},  # not a list
        {"image": "wide.png", "question": "q6", "answer": "a", "objects": [{"box": [50, 0, 40, 10], "named": True}]},
        {"image": "wide.png", "question": "q7", "answer": "a", "objects": [{"box": [0, 0, 10, 10], "named": "yes"}]},
        {"image": "wide.png", "question": "q8", "answer": "a", "objects": [box, {"box": [150, 0, 201, 10],
                                                                                  "named": False}]},  # outside
        {"image": "turned.jpg", "question": "q9", "answer": "a", "objects": [{"box": [0, 0, 30, 10], "named": True}]},
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "shards"
    assert data_main(["convert", "jsonl", "--manifest", str(tmp_path / "m.jsonl"), "--images-root",
                      str(tmp_path / "img"), "--out", str(out)]) == 0
    samples = _all(out)
    assert [s["question"] for s in samples] == ["q1", "q2", "q3"]
    assert samples[0]["objects"] == [{"box": [0.1, 0.1, 0.6, 0.6], "named": True},
                                     {"box": [0.0, 0.0, 1.0, 1.0], "named": False}]
    assert samples[1]["image"].size == (20, 40) and samples[1]["objects"] == [{"box": [0.25, 0.75, 1.0, 1.0],
                                                                               "named": False}]
    assert "objects" not in samples[2]
    assert "skipped 5 (5 bad_objects)" in capsys.readouterr().out
    warned = "\n".join(r.getMessage() for r in caplog.records)
    for n in (4, 5, 6, 7, 8):
        assert f"l{n:09d}: bad_objects" in warned
    assert "(line 5) objects[0].box=[50, 0, 40, 10] must have 0 <= x0 < x1" in warned
    assert "(line 4) 'objects' must be a list" in warned and "outside the 200x100 image" in warned
    assert "outside the 20x40 image" in warned  # the decoded (EXIF-rotated) size


def test_vqav2_round_trip(tmp_path, capsys):
    root = make_vqav2(tmp_path / "vqa")
    out = tmp_path / "shards"
    rc = data_main(["convert", "vqav2", "--questions", str(root / "q.json"), "--annotations", str(root / "a.json"),
                    "--images", str(root / "val2014"), "--out", str(out), "--shard-size", "2"])
    assert rc == 0
    samples = _all(out)
    # q10 ok; q11 missing annotation; q20, q21 corrupt image; q30, q31 ok; q40, q41 missing image
    assert [s["question_id"] for s in samples] == [10, 30, 31]
    s = samples[0]
    assert s["question"] == "What is in image 1?" and s["image_id"] == 1 and s["answer_type"] == "other"
    assert s["answers"] == ["cat"] * 7 + ["dog"] * 3 and s["image"].size == (64, 48)
    assert read_manifest(out)["total"] == 3
    report = capsys.readouterr().out
    assert "wrote 3 samples in 2 shards; skipped 5 (2 bad_image, 1 missing_annotation, 2 missing_image)" in report


def test_vqav2_test_split_without_annotations(tmp_path):
    root = make_vqav2(tmp_path / "vqa")
    out = tmp_path / "shards"
    assert data_main(["convert", "vqav2", "--questions", str(root / "q.json"), "--images", str(root / "val2014"),
                      "--out", str(out)]) == 0
    samples = _all(out)
    assert [s["question_id"] for s in samples] == [10, 11, 30, 31] and all(s["answers"] == [] for s in samples)


def test_jsonl_round_trip(tmp_path, capsys):
    (tmp_path / "img").mkdir()
    Image.new("L", (10, 10)).save(tmp_path / "img" / "a.png")
    Image.new("RGBA", (30, 20)).save(tmp_path / "img" / "b.webp")
    lines = [
        {"image": "a.png", "question": "Is it dark?", "answers": ["yes", "yes"], "question_id": 7},
        {"image": "b.webp", "question": "What is it?", "answer": "nothing"},
        {"image": "missing.png", "question": "?", "answer": "x"},
        {"question": "no image field", "answer": "x"},
        {"image": "a.png", "answers": "not-a-list", "question": "q"},
    ]
    text = "\n".join(json.dumps(x) for x in lines) + "\n{broken json\n"
    (tmp_path / "m.jsonl").write_text(text)
    out = tmp_path / "shards"
    assert data_main(["convert", "jsonl", "--manifest", str(tmp_path / "m.jsonl"), "--images-root",
                      str(tmp_path / "img"), "--out", str(out)]) == 0
    samples = _all(out)
    assert [(s["question_id"], s["answers"]) for s in samples] == [(7, ["yes", "yes"]), (2, ["nothing"])]
    assert samples[1]["image"].mode == "RGBA"
    assert "skipped 4 (1 bad_field, 1 bad_json, 1 missing_field, 1 missing_image)" in capsys.readouterr().out



def _warned(caplog):
    return "\n".join(r.getMessage() for r in caplog.records)


def test_jsonl_images_outside_the_root_are_refused_unless_allowed(tmp_path, capsys, caplog):
    (tmp_path / "img" / "sub").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "img" / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")  # outside the root
    (tmp_path / "img" / "link.png").symlink_to(tmp_path / "x.png")  # inside the root, pointing out of it
    (tmp_path / "img" / "inner.png").symlink_to("a.png")  # a symlink that stays inside is fine
    images = ["a.png", "../x.png", str(tmp_path / "x.png"), "link.png", "sub/../a.png", str(tmp_path / "img" / "a.png"),
              "inner.png"]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps({"image": im, "question": "q", "answer": "a"}) + "\n"
                                              for im in images))
    args = ["convert", "jsonl", "--manifest", str(tmp_path / "m.jsonl"), "--images-root", str(tmp_path / "img"),
            "--out", str(tmp_path / "o")]
    assert data_main(args) == 0
    assert [s["question_id"] for s in _all(tmp_path / "o")] == [1, 5, 6, 7]
    assert "wrote 4 samples in 1 shards; skipped 3 (3 outside_images_root)" in capsys.readouterr().out
    warned = _warned(caplog)
    real = tmp_path.resolve()
    assert f"l000000002: outside_images_root (line 2) image '../x.png' resolves to {real / 'x.png'}" in warned
    assert f"(line 3) image '{tmp_path / 'x.png'}' resolves to {real / 'x.png'}, outside --images-root" in warned
    assert "(line 4) image 'link.png' resolves to" in warned and "--allow-outside-root" in warned
    assert data_main(args + ["--overwrite", "--allow-outside-root"]) == 0
    assert [s["question_id"] for s in _all(tmp_path / "o")] == list(range(1, 8))
    assert "wrote 7 samples in 1 shards; skipped 0 (none)" in capsys.readouterr().out


def test_vqav2_symlinks_out_of_the_images_folder_are_refused_unless_allowed(tmp_path, capsys, caplog):
    root = make_vqav2(tmp_path / "vqa")
    Image.new("RGB", (8, 8)).save(tmp_path / "elsewhere.jpg")
    (root / "val2014" / f"COCO_val2014_{4:012d}.jpg").symlink_to(tmp_path / "elsewhere.jpg")
    args = ["convert", "vqav2", "--questions", str(root / "q.json"), "--annotations", str(root / "a.json"),
            "--images", str(root / "val2014"), "--out", str(tmp_path / "o")]
    assert data_main(args) == 0
    assert [s["question_id"] for s in _all(tmp_path / "o")] == [10, 30, 31]
    assert "skipped 5 (2 bad_image, 1 missing_annotation, 2 outside_images_root)" in capsys.readouterr().out
    assert f"q40: outside_images_root image {root / 'val2014'}/COCO_val2014_000000000004.jpg resolves to " \
           f"{(tmp_path / 'elsewhere.jpg').resolve()}" in _warned(caplog)
    assert data_main(args + ["--overwrite", "--allow-outside-root"]) == 0
    assert [s["question_id"] for s in _all(tmp_path / "o")] == [10, 30, 31, 40, 41]


def test_jsonl_field_types_are_checked_and_named(tmp_path, capsys, caplog):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "img" / "a.png")
    lines = [
        {"image": "a.png", "question": "How many?", "answer": 42},  # 1: a JSON integer: written as "42"
        {"image": "a.png", "question": "q", "answers": [3, "three"]},  # 2: coerced too
        {"image": "a.png", "question": "q", "answers": "yes"},  # 3: not a list
        {"image": "a.png", "question": 5, "answer": "a"},  # 4
        {"image": "a.png", "question": "q", "answer": 1.5},  # 5: floats are refused
        {"image": "a.png", "question": "q", "answer": True},  # 6: so are booleans
        {"image": "a.png", "question": "q", "answers": ["a", None]},  # 7
        {"image": 7, "question": "q", "answer": "a"},  # 8
        {"image": "a.png", "answer": "a"},  # 9: no question
        {"image": "a.png", "question": "q", "answer": "a", "question_id": {"id": 1}},  # 10
        ["a.png", "q", "a"],  # 11: not an object
        {"image": "a.png", "question": "Test split?", "answer": None},  # 12: null is no answer
    ]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert data_main(["convert", "jsonl", "--manifest", str(tmp_path / "m.jsonl"), "--images-root",
                      str(tmp_path / "img"), "--out", str(tmp_path / "o")]) == 0
    assert [(s["question_id"], s["answers"]) for s in _all(tmp_path / "o")] == [(1, ["42"]), (2, ["3", "three"]),
                                                                                (12, [])]
    assert ("skipped 9 (7 bad_field, 1 bad_json, 1 missing_field); coerced 2 (2 number_answer)"
            in capsys.readouterr().out)
    warned = _warned(caplog)
    assert warned.count("a number answer is written as its decimal string") == 1 and "(line 1)" in warned
    for detail in ["l000000003: bad_field (line 3) 'answers' must be a list of strings, got str \"yes\"",
                   "l000000004: bad_field (line 4) 'question' must be a string, got int 5",
                   "(line 5) 'answer' must be a string, got float 1.5",
                   "(line 6) 'answer' must be a string, got bool true",
                   "(line 7) 'answers'[1] must be a string, got null",
                   "more bad_field skips: counted in the summary, not logged one by one",  # 5 logged per reason
                   "l000000009: missing_field (line 9) 'question' is required",
                   "l000000011: bad_json (line 11) expected a JSON object, got list"]:
        assert detail in warned
    for rec, detail in [(lines[7], "'image' must be a string, got int 7"),
                        (lines[9], "'question_id' must be an integer or a string, got dict {\"id\": 1}")]:
        with pytest.raises(BadSample, match="bad_field") as err:
            jsonl_meta(rec)
        assert detail in str(err.value)


def test_convert_writing_nothing_fails_naming_the_input(tmp_path, capsys):
    (tmp_path / "img").mkdir()
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": "gone.png", "question": "q", "answer": 1.5}) + "\n"
                                      + json.dumps({"image": "gone.png", "question": "q"}) + "\n")
    args = ["convert", "jsonl", "--manifest", str(tmp_path / "m.jsonl"), "--images-root", str(tmp_path / "img"),
            "--out", str(tmp_path / "o")]
    assert data_main(args) == 1
    err = capsys.readouterr().err
    assert (f"arrcoc data convert jsonl: nothing written: all 2 samples of {tmp_path / 'm.jsonl'} were skipped "
            "(1 bad_field, 1 missing_image)") in err
    (tmp_path / "m.jsonl").write_text("\n")
    assert data_main(args + ["--overwrite"]) == 1
    assert f"nothing written: {tmp_path / 'm.jsonl'} holds no samples" in capsys.readouterr().err


def test_out_dir_is_not_silently_mixed(tmp_path, capsys):
    root = make_vqav2(tmp_path / "vqa")
    args = ["convert", "vqav2", "--questions", str(root / "q.json"), "--images", str(root / "val2014"),
            "--out", str(tmp_path / "o")]
    assert data_main(args) == 0
    assert data_main(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert data_main(args + ["--overwrite"]) == 0 and read_manifest(tmp_path / "o")["total"] == 4


def test_missing_inputs_fail_naming_the_path(tmp_path, capsys):
    assert data_main(["convert", "jsonl", "--manifest", str(tmp_path / "nope.jsonl"), "--images-root",
                      str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "nope.jsonl does not exist" in capsys.readouterr().err


@pytest.mark.slow  # `arrcoc data inspect` in subprocesses
def test_inspect(tmp_path):
    assert data_main(["sample", "--out", str(tmp_path / "st"), "--train", "0", "--val", "40"]) == 0
    out = subprocess.run([sys.executable, "-m", "arrcoc.cli", "data", "inspect", str(tmp_path / "st" / "val")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "40 readable samples (manifest says 40)" in out.stdout and "top:" in out.stdout
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.tar").write_bytes(b"garbage" * 100)
    bad = subprocess.run([sys.executable, "-m", "arrcoc.cli", "data", "inspect", str(tmp_path / "empty")],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "0 readable samples" in bad.stdout
    none = subprocess.run([sys.executable, "-m", "arrcoc.cli", "data", "inspect", str(tmp_path / "absent")],
                          capture_output=True, text=True)
    assert none.returncode == 2 and "absent" in none.stderr


def test_bad_shard_size_deletes_nothing(tmp_path, capsys):
    root = make_vqav2(tmp_path / "vqa")
    args = ["convert", "vqav2", "--questions", str(root / "q.json"), "--images", str(root / "val2014"),
            "--out", str(tmp_path / "o")]
    assert data_main(args) == 0
    assert data_main(args + ["--overwrite", "--shard-size", "0"]) == 2
    assert "--shard-size 0" in capsys.readouterr().err and read_manifest(tmp_path / "o")["total"] == 4
