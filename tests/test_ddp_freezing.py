"""Encoder unfreezing under a real two-process DDP run on CPU (gloo): the scheduled block does not
move before its step, moves after it on both ranks, and stays identical across ranks."""

import json
from pathlib import Path

import pytest

from conftest import run_ddp_script

pytestmark = pytest.mark.slow  # two processes, each building a model and a trainer

SCRIPT = Path(__file__).with_name("ddp_freezing_script.py")


def test_unfreezing_under_ddp(tmp_path):
    run_ddp_script(SCRIPT, tmp_path)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert r0["world"] == 2
    top0 = r0["top"]  # snapshots at the start of steps 0..4, then at fit end
    assert top0[0] == top0[1] == top0[2], "frozen (lr 0) until step 2"
    assert top0[3] != top0[2] and top0[-1] != top0[3], "trains from step 2 on"
    assert r0["top"] == r1["top"], "identical on both ranks at every step"
    assert r0["bottom"][0] == r0["bottom"][-1] == r1["bottom"][-1], "blocks outside the schedule never move"
