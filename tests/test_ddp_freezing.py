"""Encoder unfreezing under a real two-process DDP run on CPU (gloo): the scheduled block does not
move before its step, moves after it on both ranks, and stays identical across ranks."""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).with_name("ddp_freezing_script.py")


def test_unfreezing_under_ddp(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "LOCAL_RANK", "RANK", "WORLD_SIZE"))}
    try:
        run = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], env=env, capture_output=True, text=True,
                             timeout=300)
    except subprocess.TimeoutExpired as err:
        raise AssertionError(f"DDP run hung (killed after 300 s): {err.stderr!s:.2000}") from err
    assert run.returncode == 0, run.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert r0["world"] == 2
    top0 = r0["top"]  # snapshots at the start of steps 0..4, then at fit end
    assert top0[0] == top0[1] == top0[2], "frozen (lr 0) until step 2"
    assert top0[3] != top0[2] and top0[-1] != top0[3], "trains from step 2 on"
    assert r0["top"] == r1["top"], "identical on both ranks at every step"
    assert r0["bottom"][0] == r0["bottom"][-1] == r1["bottom"][-1], "blocks outside the schedule never move"
