"""`arrcoc visualize`: the allocation figure for any image and question(s) — the expected panels, kept and
dropped patches told apart in the pixels, one column per question, and a clear error for an unreadable image."""

import numpy as np
import torch
from PIL import Image

from arrcoc.figures import DIM, figure, shown_image
from arrcoc.visualize import allocate, main
from conftest import ROOT, draw_image

QUESTIONS = ["What color is the triangle?", "How many circles are there in the image?"]


def test_one_column_per_question_with_the_selection_in_the_pixels(tiny_model):
    img = draw_image(3, size=(160, 120))  # any size: the encoder's transform crops it
    pixels, columns = allocate(tiny_model, img, QUESTIONS, budget=100)
    fig = figure(tiny_model, pixels, columns)
    panels = 1 + len(tiny_model.scorer_names) + 1  # the image, each scorer's map, the balanced map
    assert len(fig.axes) == len(QUESTIONS) * panels
    titles = [ax.get_title() for ax in fig.axes]
    assert sum("Q: " in t for t in titles) == len(QUESTIONS) and "balanced" in titles
    assert all(c.record.budget == 100 for c in columns)
    # kept patches keep their pixels, dropped ones are dimmed
    drawn = np.asarray(fig.axes[0].images[0].get_array())  # [S, S, 3]
    source = shown_image(tiny_model, pixels)
    gh, gw = tiny_model.encoder.grid
    ph, pw = source.shape[0] // gh, source.shape[1] // gw
    kept = set(columns[0].record.kept_indices.tolist())
    k, d = next(i for i in range(gh * gw) if i in kept), next(i for i in range(gh * gw) if i not in kept)
    for idx, factor in ((k, 1.0), (d, DIM)):
        y, x = divmod(idx, gw)
        block = (slice(y * ph, (y + 1) * ph), slice(x * pw, (x + 1) * pw))
        np.testing.assert_allclose(drawn[block], source[block] * factor, atol=1e-6)


def test_the_command_writes_the_figure_and_names_an_unreadable_image(tmp_path, tiny_model, capsys):
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in tiny_model.state_dict().items()}}, ckpt)
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    base = ["--config", str(ROOT / "configs/phase3.yaml"), "--ckpt", str(ckpt), "--question", QUESTIONS[0]]
    assert main([*base, "--image", str(bad), "--out", str(tmp_path / "x.png")]) == 2
    assert f"--image {bad} is not an image PIL can read" in capsys.readouterr().err
    photo = tmp_path / "photo.jpg"
    draw_image(5, size=(200, 150)).save(photo)
    out = tmp_path / "swap.png"
    assert main([*base, "--question", QUESTIONS[1], "--image", str(photo), "--out", str(out)]) == 0
    with Image.open(out) as png:
        assert png.width > png.height > 100  # two columns side by side
