"""The sample task: deterministic for a seed, and its answers right by the generator's own scene."""

import json
import random
from collections import Counter

import numpy as np

from arrcoc.data import sample_task
from arrcoc.data.cli import main as data_main
from arrcoc.data.sample_task import ANSWERS, COLORS, KINDS, LAYOUTS, Obj, SampleTaskConfig, label_map, make_sample
from arrcoc.data.shards import decode, iter_tar
from arrcoc.processing import patch_masks


def _check(question: str, answer: str, scene: list[dict]) -> None:
    """Recompute the answer from the scene description alone."""
    words = question.rstrip("?").split()
    if question.startswith("What color is the "):
        (obj,) = [o for o in scene if o["shape"] == words[-1]]  # the named shape is unique
        assert answer == obj["color"]
    elif question.startswith("What shape is the "):
        (obj,) = [o for o in scene if o["color"] == words[4]]  # the only object of that colour
        assert answer == obj["shape"]
    elif question.startswith("Is there a "):
        color, shape = words[3], words[4]
        assert answer == ("yes" if any(o["color"] == color and o["shape"] == shape for o in scene) else "no")
    elif question.startswith("How many "):
        assert answer == str(sum(o["color"] == words[2] for o in scene))
    elif question == "What objects are in the image?":
        named = [tuple(name.split()) for name in answer.split(", ")]
        assert named == [(o["color"], o["shape"]) for o in sorted(scene, key=lambda o: (o["x"], o["y"]))]
    else:  # "Is the {c} {s} left of|above the {c} {s}?"
        a = next(o for o in scene if o["color"] == words[2] and o["shape"] == words[3])
        b = next(o for o in scene if o["color"] == words[-2] and o["shape"] == words[-1])
        axis = "x" if words[4] == "left" else "y"
        assert abs(a[axis] - b[axis]) >= a["r"] + b["r"], "related objects are clearly apart"
        assert answer == ("yes" if a[axis] < b[axis] else "no"), (question, a, b)


def test_answers_follow_from_the_scene():
    kinds = set()
    for i in range(600):
        split = "train" if i % 2 else "val"
        meta, img = make_sample(split, i, seed=3, size=128, list_share=0.25)
        assert len(meta["answers"]) == 10 and len(set(meta["answers"])) == 1
        assert meta["question_type"] == "objects" or meta["answers"][0] in ANSWERS
        assert split == "train" or meta["question_type"] != "objects"  # validation asks the VQA kinds only
        _check(meta["question"], meta["answers"][0], meta["scene"])
        kinds.add(meta["question_type"])
        assert img.size == (128, 128)
    assert kinds == {*KINDS, "objects"}


def _named(question: str, scene: list[dict]) -> list[int]:
    """Which scene objects the question is about, from its words alone."""
    words = question.rstrip("?").split()
    if question.startswith("What color is the "):
        return [i for i, o in enumerate(scene) if o["shape"] == words[-1]]
    if question.startswith("What shape is the "):
        return [i for i, o in enumerate(scene) if o["color"] == words[4]]
    if question.startswith("Is there a "):
        return [i for i, o in enumerate(scene) if (o["color"], o["shape"]) == (words[3], words[4])]
    if question.startswith("How many "):
        return [i for i, o in enumerate(scene) if o["color"] == words[2]]
    if question == "What objects are in the image?":
        return list(range(len(scene)))
    related = ((words[2], words[3]), (words[-2], words[-1]))  # "Is the {c} {s} left of|above the {c} {s}?"
    return [i for i, o in enumerate(scene) if (o["color"], o["shape"]) in related]


def test_objects_say_where_and_which_the_question_names():
    by_kind = {}
    for i in range(400):
        split = "train" if i % 2 else "val"
        meta, _ = make_sample(split, i, seed=5, size=128, list_share=0.25)
        scene, objects = meta["scene"], meta["objects"]
        assert len(objects) == len(scene) and all(set(o) == {"box", "named"} for o in objects)
        named = [j for j, o in enumerate(objects) if o["named"]]
        assert named == _named(meta["question"], scene), meta
        if meta["answers"][0] == "no" and meta["question"].startswith("Is there"):
            assert named == []
        form = meta["question"].split()[1] if meta["question_type"] != "objects" else "objects"
        by_kind.setdefault(form, []).append(len(named))  # by what is asked (a kind may fall back to existence)
        # the box is where the object is drawn: the label map's extent, to a pixel
        mask = label_map([Obj(**o) for o in scene], 128)
        for j, (o, obj) in enumerate(zip(scene, objects, strict=True)):
            ys, xs = np.nonzero(mask == j + 1)
            extent = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) / 128
            assert np.abs(np.array(obj["box"]) - extent).max() <= 1 / 128 + 1e-9, (o, obj["box"], extent)
            if o["shape"] == "square":
                assert np.allclose(obj["box"], extent)
            assert obj["box"] == [(o["x"] - o["r"]) / 128, (o["y"] - o["r"]) / 128,
                                  (o["x"] + o["r"] + 1) / 128, (o["y"] + o["r"] + 1) / 128]
    assert set(by_kind["the"]) == {2} and set(by_kind["color"]) == {1}  # "Is the ... left of ...", "What color ..."
    assert set(by_kind["there"]) == {0, 1} and max(by_kind["many"]) >= 2 and min(by_kind["many"]) == 0
    assert all(n >= 2 for n in by_kind["objects"])  # a close-up has 2 to 4 objects


def test_cache_stamp_names_the_version():
    stamp = SampleTaskConfig().stamp()
    assert stamp["version"] == 4  # 4: scene layouts; older caches are remade
    assert [row[0] for row in stamp["scene"]] == list(LAYOUTS)  # the geometry is stamped too


def test_objects_are_drawn_where_the_scene_says():
    meta, img = make_sample("val", 5, seed=0, size=128)
    px = np.asarray(img)
    for o in meta["scene"]:
        assert np.abs(px[o["y"], o["x"]].astype(int) - COLORS[o["color"]]).max() < 3, o


def test_deterministic_for_a_seed(tmp_path):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        assert data_main(["sample", "--out", str(tmp_path / name), "--train", "30", "--val", "10",
                          "--seed", str(seed), "--shard-size", "16"]) == 0
    a = sorted((tmp_path / "a").rglob("*.tar"))
    assert [p.name for p in a] == ["train-000000.tar", "train-000001.tar", "val-000000.tar"]
    for p in a:
        assert p.read_bytes() == (tmp_path / "b" / p.relative_to(tmp_path / "a")).read_bytes()
    assert (tmp_path / "c/train/train-000000.tar").read_bytes() != a[0].read_bytes()
    # a sample regenerated alone equals the one in the shard
    raws = list(iter_tar(str(a[1])))
    samples = [decode(r) for r in raws]
    meta, _ = make_sample("train", 20, seed=1, size=128)
    assert samples[4]["question"] == meta["question"] and samples[4]["question_id"] == meta["question_id"]
    assert json.loads(raws[4].files["json"]) == meta  # layout and scene included
    for split, index in (("val", 3), ("train", 11)):  # a sample regenerated equals itself, image included
        (one, img_one), (two, img_two) = (make_sample(split, index, 4, 128, 0.25) for _ in range(2))
        assert one == two and img_one.tobytes() == img_two.tobytes()


def test_counting_needs_several_regions():
    """Count questions about a colour with several objects: the answer is spread over the image."""
    rng = random.Random(0)
    found = 0
    for i in range(400):
        meta, _ = make_sample("train", i, seed=rng.randrange(10), size=128)
        if meta["question_type"] == "count" and int(meta["answers"][0]) >= 2:
            found += 1
    assert found >= 5


def test_layouts_follow_their_geometry():
    """Each layout's object counts and sizes stay in its ranges; pairs are unique and objects apart."""
    rng = random.Random(1)
    for layout, spec in LAYOUTS.items():
        counts = []
        for _ in range(40):
            name, objs = sample_task.make_layout_scene(rng, 128, layout)
            assert name == layout and len(objs) <= spec.objects[1]
            counts.append(len(objs))
            lo, hi = max(2, round(128 * spec.radius[0])), round(128 * spec.radius[1])
            assert all(lo <= o.r <= hi for o in objs), (layout, [o.r for o in objs])
            assert len({(o.shape, o.color) for o in objs}) == len(objs)
            assert all(abs(a.x - b.x) >= a.r + b.r + 3 or abs(a.y - b.y) >= a.r + b.r + 3
                       for i, a in enumerate(objs) for b in objs[i + 1:])
            assert all(o.r + 1 <= o.x <= 128 - o.r - 2 and o.r + 1 <= o.y <= 128 - o.r - 2 for o in objs)
        assert min(counts) >= spec.objects[0] - 1 and np.mean(counts) >= sum(spec.objects) / 2 - 1.5, (layout, counts)
    # the encoder's pretraining scenes keep their single size range
    radius = sample_task.RADIUS
    objs = sample_task.make_scene(random.Random(2), 128, radius)
    assert sample_task.NUM_OBJECTS[0] <= len(objs) <= sample_task.NUM_OBJECTS[1]
    assert all(round(128 * radius[0]) <= o.r <= round(128 * radius[1]) for o in objs)


def test_most_scenes_need_a_choice():
    """The objects of most scenes cover more than 64 of the tiny encoder's 24x24 patches, while the
    question names a minority of them: a 64-token selection cannot keep every object."""
    n, layouts, over, minority, shares = 300, Counter(), 0, 0, []
    for i in range(n):
        meta, _ = make_sample("val", i, seed=7, size=128)
        layouts[meta["layout"]] += 1
        named, other = patch_masks(meta["objects"], (24, 24))  # as the token benchmark counts them
        total = int((named | other).sum())
        over += total > 64
        minority += int(named.sum()) < total / 2
        shares.append(int(named.sum()) / total)
        if meta["answer_type"] == "number":
            assert meta["answers"][0] in sample_task.NUMBERS  # counts stay in the vocabulary
    assert set(layouts) == set(LAYOUTS) and min(layouts.values()) >= n // 10, layouts
    assert over >= 0.85 * n, over
    assert minority >= 0.85 * n and np.mean(shares) < 0.3, (minority, np.mean(shares))
