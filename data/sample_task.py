"""The bundled sample task: coloured shapes on a textured background, with VQA questions.

Deterministic from the seed (each sample from its own RNG, so any sample can be regenerated alone),
fast on a CPU, and written through the same :class:`~arrcoc.data.shards.ShardWriter` as the
converters. Answering needs a small, question-dependent part of the image: the colour of one named
shape, whether a combination exists, how many objects of a colour there are (several regions: needs
more tokens), or where one object is relative to another. Closed answer vocabulary; ten identical
annotator answers per question, so the VQA soft accuracy applies. Each sample's json says where its
objects are and which ones the question names (``objects``), and which kind of scene it is (``layout``),
for measuring what a selection keeps.

Scenes vary as real images do (:data:`LAYOUTS`): clutter (many small objects), mixed (a handful of
widely varied sizes) and close-ups (a few large objects). In most scenes the objects together cover
more than a 64-token budget of the tiny encoder's 24x24 grid, while a question names one or two of
them (or one colour's): a selection cannot keep every object, so only one that follows the question
keeps the right ones.
"""

from __future__ import annotations

import functools
import json
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from arrcoc.data.shards import ShardWriter, encode_image

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (40, 70, 230), "yellow": (240, 220, 30),
    "purple": (150, 50, 200), "orange": (250, 140, 20), "white": (250, 250, 250),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
KINDS = ("attribute", "existence", "count", "spatial")
NUMBERS = [str(i) for i in range(10)]
ANSWERS = sorted(set(COLORS) | set(SHAPES) | {"yes", "no"} | set(NUMBERS))


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    x: int  # centre, pixels
    y: int
    r: int  # half size, pixels

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


#: Objects per scene and their half size (a fraction of the image side) for :func:`make_scene`: one
#: size range, as the shipped tiny encoder was pretrained on (``arrcoc.pretrain.encoder``).
NUM_OBJECTS = (3, 8)
RADIUS = (1 / 20, 1 / 12)


def make_scene(rng: random.Random, size: int, radius: tuple[float, float] = RADIUS) -> list[Obj]:
    """3-8 small non-overlapping objects, each a (shape, colour) pair that appears at most once;
    half sizes drawn from ``radius`` (fractions of ``size``). The encoder's pretraining scenes; the
    sample task draws :func:`make_layout_scene`."""
    objs: list[Obj] = []
    want = rng.randint(*NUM_OBJECTS)
    tries = 0
    while len(objs) < want and tries < 200:
        tries += 1
        r = rng.randint(max(2, round(size * radius[0])), max(2, round(size * radius[1])))
        x, y = rng.randint(r + 1, size - r - 2), rng.randint(r + 1, size - r - 2)
        shape, color = rng.choice(SHAPES), rng.choice(sorted(COLORS))
        if any(o.shape == shape and o.color == color for o in objs):
            continue
        if any(abs(o.x - x) < o.r + r + 3 and abs(o.y - y) < o.r + r + 3 for o in objs):
            continue
        objs.append(Obj(shape, color, x, y, r))
    return objs


@dataclass(frozen=True)
class Layout:
    """A kind of scene: how often it is drawn, how many objects it has, and their half sizes (fractions
    of the image side, drawn log-uniformly: each step up in scale is as likely as the one before)."""

    weight: float
    objects: tuple[int, int]
    radius: tuple[float, float]


#: The sample task's kinds of scene. Real images vary: many small things, a handful of things of any
#: size, a few things up close. At the tiny encoder's 24x24 grid (a patch is 5.3 px of the 128 px image;
#: counting the patches whose centre an object's box holds, as ``arrcoc.processing.patch_masks`` does) a
#: clutter object covers 4-12 patches (6 on average, about 90 per scene), a mixed one 4-49 (15; about
#: 115 per scene), a close-up one 25-100 (55; about 160 per scene). So in nearly every scene the objects
#: cover more than a 64-token budget, while a question names one or two of them (or one colour's): the
#: selection must choose which objects to keep.
LAYOUTS: dict[str, Layout] = {
    "clutter": Layout(0.4, (12, 18), (1 / 28, 1 / 17)),
    "mixed": Layout(0.4, (6, 10), (1 / 28, 1 / 8)),
    "closeup": Layout(0.2, (2, 4), (1 / 9, 1 / 5)),
}
_LAYOUT_NAMES = list(LAYOUTS)
_LAYOUT_WEIGHTS = [spec.weight for spec in LAYOUTS.values()]
_PAIRS = [(s, c) for s in SHAPES for c in sorted(COLORS)]
_PLACE_TRIES = 40  # positions tried per object before it is left out


def make_layout_scene(rng: random.Random, size: int, layout: str | None = None) -> tuple[str, list[Obj]]:
    """(layout, objects): a scene of one of :data:`LAYOUTS` (drawn by weight unless ``layout`` is
    given). Objects do not overlap (the same gap as :func:`make_scene`) and each (shape, colour) pair
    appears at most once, so a scene has at most 5 objects of a colour (counts stay in the vocabulary).
    Sizes are drawn first and placed largest first; an object that finds no free place shrinks a little
    every 10 tries (not below the layout's smallest size) and is left out after ``_PLACE_TRIES`` (in
    3000 scenes: 3 of 1757 close-up objects, none of the clutter or mixed ones; no scene ended with
    fewer objects than its layout's fewest)."""
    if layout is None:
        layout = rng.choices(_LAYOUT_NAMES, weights=_LAYOUT_WEIGHTS)[0]
    spec = LAYOUTS[layout]
    lo, hi = math.log(spec.radius[0]), math.log(spec.radius[1])
    smallest = max(2, round(size * spec.radius[0]))
    radii = sorted((max(smallest, round(size * math.exp(rng.uniform(lo, hi))))
                    for _ in range(rng.randint(*spec.objects))), reverse=True)
    pairs = list(_PAIRS)
    objs: list[Obj] = []
    for r in radii:
        for attempt in range(1, _PLACE_TRIES + 1):
            if attempt % 10 == 0:  # no room at this size: a little smaller (not below the layout's smallest)
                r = max(smallest, round(r * 0.85))
            x, y = rng.randint(r + 1, size - r - 2), rng.randint(r + 1, size - r - 2)
            if not any(abs(o.x - x) < o.r + r + 3 and abs(o.y - y) < o.r + r + 3 for o in objs):
                shape, color = pairs.pop(rng.randrange(len(pairs)))
                objs.append(Obj(shape, color, x, y, r))
                break
    return layout, objs


@functools.lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


def render(objs: list[Obj], size: int, seed: int) -> Image.Image:
    """Textured background (a muted base colour, stripes and noise) with the objects drawn on it."""
    rng = np.random.default_rng(seed)
    base = rng.integers(60, 140, size=3).astype(np.float32)
    yy, xx = _grid(size)
    freq, angle = rng.uniform(0.15, 0.5), rng.uniform(0, np.pi)
    stripes = 18 * np.sin(np.float32(freq * np.cos(angle)) * xx + np.float32(freq * np.sin(angle)) * yy)
    noise = rng.standard_normal(size=(size, size), dtype=np.float32) * 12
    bg = np.clip(base + (stripes + noise)[..., None], 0, 255).astype(np.uint8)
    img = Image.fromarray(bg, "RGB")
    draw = ImageDraw.Draw(img)
    for o in objs:
        _draw(draw, o, COLORS[o.color])
    return img


def label_map(objs: list[Obj], size: int) -> np.ndarray:
    """[size, size] uint8: 0 on background, ``i + 1`` where object ``i`` is drawn (same geometry as
    :func:`render`). Dense supervision for pretraining the tiny encoder."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    for i, o in enumerate(objs):
        _draw(draw, o, i + 1)
    return np.asarray(mask)


def _draw(draw: ImageDraw.ImageDraw, o: Obj, fill) -> None:
    box = [o.x - o.r, o.y - o.r, o.x + o.r, o.y + o.r]
    if o.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif o.shape == "square":
        draw.rectangle(box, fill=fill)
    elif o.shape == "triangle":
        draw.polygon([(o.x, o.y - o.r), (o.x - o.r, o.y + o.r), (o.x + o.r, o.y + o.r)], fill=fill)
    elif o.shape == "diamond":
        draw.polygon([(o.x, o.y - o.r), (o.x + o.r, o.y), (o.x, o.y + o.r), (o.x - o.r, o.y)], fill=fill)
    else:  # cross
        w = max(o.r // 3, 1)
        draw.rectangle([o.x - o.r, o.y - w, o.x + o.r, o.y + w], fill=fill)
        draw.rectangle([o.x - w, o.y - o.r, o.x + w, o.y + o.r], fill=fill)


def ask(objs: list[Obj], rng: random.Random, kind: str,
        size: int = 128) -> tuple[str, str, str, list[Obj]]:
    """(question, answer, answer_type, named) of one kind about the scene, answered from the scene
    itself; ``named``: the scene's objects the question is about (the one asked about; the one whose
    existence is asked, none when the answer is no; every object of the counted colour; both related
    objects).

    Every question has exactly one right answer: named objects are unique, and relations are only
    asked between objects that are clearly apart on the asked axis (else another kind is asked)."""
    if kind == "attribute":
        by_shape = {s: [o for o in objs if o.shape == s] for s in SHAPES}
        unique = [o for o in objs if len(by_shape[o.shape]) == 1]
        if unique:
            o = rng.choice(unique)
            return f"What color is the {o.shape}?", o.color, "other", [o]
        # every shape repeats: ask for the shape of the only object of its colour
        lone = [o for o in objs if sum(p.color == o.color for p in objs) == 1]
        if lone:
            o = rng.choice(lone)
            return f"What shape is the {o.color} object?", o.shape, "other", [o]
        kind = "existence"
    if kind == "existence":
        if rng.random() < 0.5:
            o = rng.choice(objs)
            return f"Is there a {o.color} {o.shape}?", "yes", "yes/no", [o]
        present = {(o.color, o.shape) for o in objs}
        absent = [(c, s) for c in sorted(COLORS) for s in SHAPES if (c, s) not in present]
        c, s = rng.choice(absent)
        return f"Is there a {c} {s}?", "no", "yes/no", []
    if kind == "count":
        color = rng.choice([o.color for o in objs] + [rng.choice(sorted(COLORS))])
        counted = [o for o in objs if o.color == color]
        return f"How many {color} objects are there?", str(len(counted)), "number", counted
    if kind == "spatial":
        axis = "x" if rng.random() < 0.5 else "y"
        pairs = [(a, b) for a in objs for b in objs
                 if a is not b and abs(getattr(a, axis) - getattr(b, axis)) >= a.r + b.r]
        if pairs:
            a, b = rng.choice(pairs)
            if axis == "x":
                return f"Is the {a.name} left of the {b.name}?", "yes" if a.x < b.x else "no", "yes/no", [a, b]
            return f"Is the {a.name} above the {b.name}?", "yes" if a.y < b.y else "no", "yes/no", [a, b]
    return ask(objs, rng, "existence", size)


@dataclass(frozen=True)
class SampleTaskConfig:
    """How to generate the sample task (also used to check whether a cached copy is current)."""

    train: int = 20000
    val: int = 1000
    seed: int = 0
    #: of the generator, not settable: bumped when samples change (questions; 3: the json's ``objects``;
    #: 4: scene layouts), so caches are remade
    version: int = field(default=4, init=False)
    #: the scene geometry, not settable: part of the cache stamp. Each layout's (name, weight, objects
    #: per scene, half-size range) from :data:`LAYOUTS`
    scene: tuple = field(init=False, default=tuple(
        (name, spec.weight, spec.objects, spec.radius) for name, spec in LAYOUTS.items()))
    image_size: int = 128
    samples_per_shard: int = 1000
    #: share of training questions that ask to list every object (validation asks the four VQA kinds)
    list_objects: float = 0.25

    def stamp(self) -> dict[str, Any]:
        """What a cached copy must match to be current (JSON-normalised)."""
        return json.loads(json.dumps(asdict(self)))


LIST_QUESTION = "What objects are in the image?"


def list_objects(objs: list[Obj]) -> str:
    """Every object, left to right: ``"red circle, blue square"``. The caption-like answer gives a
    training question one supervised token per object word, as LLaVA's alignment stage uses
    captions: a small LLM trained from scratch learns to look at the image far sooner."""
    return ", ".join(o.name for o in sorted(objs, key=lambda o: (o.x, o.y)))


def object_box(o: Obj, size: int) -> list[float]:
    """Where ``o`` is drawn, ``[x0, y0, x1, y1]`` normalised to the image (x right, y down), clipped to
    [0, 1]: its centre ± its half size, in continuous coordinates where pixel ``k`` spans ``[k, k + 1]``
    (the object covers pixels ``x - r .. x + r``, so the box is ``[x - r, x + r + 1] / size``)."""
    box = [(o.x - o.r) / size, (o.y - o.r) / size, (o.x + o.r + 1) / size, (o.y + o.r + 1) / size]
    return [min(max(v, 0.0), 1.0) for v in box]


def make_sample(split: str, index: int, seed: int, size: int,
                list_share: float = 0.0) -> tuple[dict[str, Any], Image.Image]:
    """Sample ``index`` of ``split``: json metadata (with the scene, and ``objects``: each scene
    object's box and whether the question names it) and the image. A ``list_share`` of training
    samples (none elsewhere) asks to list every object (and so names them all)."""
    rng = random.Random(f"arrcoc-sample/{seed}/{split}/{index}")
    layout, objs = make_layout_scene(rng, size)
    kind = KINDS[index % len(KINDS)] if split != "train" else rng.choice(KINDS)
    if split == "train" and rng.random() < list_share:
        kind, question, answer, answer_type, named = "objects", LIST_QUESTION, list_objects(objs), "other", objs
    else:
        question, answer, answer_type, named = ask(objs, rng, kind, size)
    qid = (0 if split == "train" else 1) * 10**9 + index
    meta = {"question": question, "answers": [answer] * 10, "question_id": qid, "image_id": qid,
            "answer_type": answer_type, "question_type": kind, "layout": layout, "scene": [asdict(o) for o in objs],
            "objects": [{"box": object_box(o, size), "named": any(o is n for n in named)} for o in objs]}
    image_seed = rng.randrange(2**32)
    return meta, render(objs, size, image_seed)


def write_split(out_dir: Path, split: str, count: int, cfg: SampleTaskConfig, progress: bool = True) -> dict:
    """Generate ``count`` samples of ``split`` into ``out_dir`` (shards + manifest)."""
    from tqdm import tqdm

    with ShardWriter(out_dir, prefix=split, samples_per_shard=cfg.samples_per_shard) as writer:
        for i in tqdm(range(count), desc=f"sample task {split}", unit="sample", disable=not progress,
                      mininterval=1.0):
            meta, img = make_sample(split, i, cfg.seed, cfg.image_size, cfg.list_objects)
            writer.write(f"{split}{i:08d}", meta, image=encode_image(img, "jpg"), image_ext="jpg")
    return writer.manifest
