"""``arrcoc demo`` end to end at toy size: three phases from the YAML configs, then the table."""

import json
import re
import subprocess
import sys


def test_demo_runs_the_three_phases_and_reports(tmp_path):
    out = subprocess.run([sys.executable, "-m", "arrcoc.cli", "demo", "--steps", "3", "2", "2", "--train", "64",
                          "--val", "24", "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    for phase in (1, 2, 3):
        assert (tmp_path / "run" / f"phase{phase}" / "checkpoints" / "last.ckpt").is_file()
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    acc = results["accuracy"]
    assert set(acc) == {"full", "shuffled", "adaptive", "random", "grid", "majority", "learned@64", "random@64",
                        "grid@64"}
    assert all(0.0 <= v <= 1.0 for v in acc.values()) and results["samples"] == 24
    vt = results["visual_tokens"]
    assert 64 <= vt["min"] <= vt["mean"] <= vt["max"] <= 401
    assert 64 <= results["visual_tokens_fixed_budget"] <= 65  # 64 kept + at most one summary token
    # per question type: the sample task's validation cycles through its four kinds
    assert set(results["accuracy_by_type"]) == {"attribute", "existence", "count", "spatial"}
    assert results["step_time_ms"]["ratio"] > 0
    text = out.stdout
    for row in ("all tokens (baseline)", "all tokens, another image", "adaptive (learned)",
                "random, same budgets", "grid, same budgets", "learned selection, budget 64",
                "random selection, budget 64", "majority answer"):
        assert row in text
    assert re.search(r"training step, full vs adaptive: \d+ ms vs \d+ ms = [\d.]+x", text)
    # arrcoc's own reports reach the console, as under `arrcoc fit`: each phase says what it loaded
    assert "[arrcoc] init_from" in out.stderr and "projector loaded" in out.stderr
    assert "INFO:arrcoc" not in out.stderr  # once, not again through the root logger
