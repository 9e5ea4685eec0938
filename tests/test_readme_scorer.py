"""The README's user-scorer example, run as written: defined in a module of its own, referenced from
YAML by class_path next to a built-in, and trained for a few steps."""

import re
import sys
from pathlib import Path

import pytest
import torch
import yaml

from arrcoc.config import build_model
from conftest import make_batch

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_blocks() -> tuple[str, str]:
    text = README.read_text()
    after = text.split("<!-- example:user-scorer -->", 1)[1]
    code = re.search(r"```python\n(.*?)```", after, re.S).group(1)
    config = re.search(r"```yaml\n(.*?)```", after, re.S).group(1)
    return code, config


def test_example_is_short():
    code, _ = _readme_blocks()
    assert len(code.strip().splitlines()) < 30


@pytest.mark.slow  # a short training run
def test_readme_scorer_trains_from_yaml(tmp_path, monkeypatch):
    code, config = _readme_blocks()
    (tmp_path / "my_scorers.py").write_text(code)
    (tmp_path / "my.yaml").write_text(config)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_scorers", None)

    torch.manual_seed(0)
    model = build_model(tmp_path / "my.yaml")
    assert model.scorer_names == ["participatory", "ContrastScorer"]
    scorer = model.scorers[1]
    assert type(scorer).__module__ == "my_scorers" and scorer.probe[0].out_features == 64  # init_args applied
    assert yaml.safe_load(config)["model"]["scorers"][1]["init_args"]["hidden"] == 64

    model.train()
    batch = make_batch(model, n=4)
    before = {n: p.detach().clone() for n, p in scorer.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(8):
        out = model(**batch, return_logits=False)
        opt.zero_grad()
        out.loss.backward()
        assert scorer.contrast_weight.grad is not None and scorer.contrast_weight.grad != 0
        opt.step()
        losses.append(out.lm_loss.item())
    assert losses[-1] < losses[0]
    assert all(not torch.equal(before[n], p) for n, p in scorer.named_parameters()), "every parameter trained"
