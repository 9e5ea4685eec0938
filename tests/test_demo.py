import re
import subprocess
import sys


def test_demo_runs_and_learns():
    out = subprocess.run([sys.executable, "-m", "arrcoc.cli", "demo", "--steps", "12", "--batch-size", "8"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    first, last = map(float, re.search(r"lm_loss: ([\d.]+) -> ([\d.]+)", text).groups())
    assert last < first
    adaptive = float(re.search(r"visual tokens / sample\s+576\s+([\d.]+)", text).group(1))
    assert 64 <= adaptive <= 401
    assert re.search(r"step-time ratio full/adaptive: [\d.]+x", text)
