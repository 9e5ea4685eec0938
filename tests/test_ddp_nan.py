"""The non-finite-loss guard under a real two-process DDP run on CPU (gloo): when one rank's loss is NaN,
every rank skips that step together (no hang, no update anywhere), then training goes on in step."""

import json
from pathlib import Path

import pytest

from conftest import run_ddp_script

pytestmark = pytest.mark.slow  # two processes, each building a model and a trainer

SCRIPT = Path(__file__).with_name("ddp_nan_script.py")


def test_one_ranks_nan_skips_the_step_on_every_rank(tmp_path):
    run_ddp_script(SCRIPT, tmp_path)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert r0["world"] == 2 and r0["steps"] == r1["steps"] == 5
    snaps = r0["snaps"]  # at the start of steps 0..4, then at fit end
    assert len(snaps) == 6
    assert snaps[2] == snaps[3], "step 2 (NaN on rank 1 only) changed nothing, on rank 0 either"
    assert snaps[1] != snaps[2] and snaps[3] != snaps[4] != snaps[5], "the other steps train"
    assert r0["snaps"] == r1["snaps"], "the ranks stay identical"
    assert r0["skips"] == r1["skips"] == [0, 0, 1, 0, 0], "both ranks count the skip, then reset"
    hist = [json.loads(line) for line in (tmp_path / "val_budget_histogram.jsonl").open()]
    assert len(hist) == 1 and hist[0]["step"] == 5, "one evaluation; the sanity check is not one"
    assert sum(hist[0]["counts"]) == 8, "every validation question once, over both ranks"
