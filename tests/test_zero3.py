"""ZeRO-3 with a deferred LLM, on CPU: two processes (DeepSpeed's CPU accelerator, gloo) run a phase's
``configure_model`` inside ``deepspeed.zero.Init`` as Lightning's DeepSpeed strategy does on GPUs. The LLM is built
split across the ranks, ``init_from`` lands in the split weights, and freezing is that of the same phase built whole.
(Lightning's DeepSpeed strategy itself needs CUDA: the full ZeRO-3 fit is scripts/gpu_check.sh's.)"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ddp_env

pytestmark = [pytest.mark.slow,  # two processes, each building three tiny models (and, once, a DeepSpeed C++ op)
              pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                 reason='needs deepspeed (pip install "arrcoc[deepspeed]")')]

SCRIPT = Path(__file__).with_name("zero3_script.py")


def test_a_deferred_llm_is_built_split_and_loads_init_from(tmp_path):
    port = 29600 + (hash(str(tmp_path)) % 300)
    procs = []
    for rank in range(2):
        env = ddp_env(DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2", ARRCOC_TEST_WATCHDOG="420")
        procs.append(subprocess.Popen([sys.executable, str(SCRIPT), str(tmp_path)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=480)[0] for p in procs]
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-6000:]

    for rank in range(2):
        r = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert r["world"] == 2
        assert r["before"] == {"built": False, "llm_parameters": 0}, "nothing of the LLM exists before configure_model"
        assert r["built"]
        # every LLM weight is split: each rank holds half of the elements
        assert r["llm_partitioned"] == r["llm_parameters"] > 0
        assert r["llm_local_numel"] * 2 == pytest.approx(r["llm_numel"], rel=0.01)
        assert r["hidden_size"] == 128
        # init_from reached the split weights: gathered, every weight equals the phase built whole from the same file
        assert r["mismatched"] == []
        assert r["report"] == r["reference_report"] and set(r["report"].values()) == {"loaded"}
        # and the phase froze after the build exactly as it freezes at construction
        trainable, reference = r["trainable"], r["reference_trainable"]
        assert trainable == reference and any(v for k, v in trainable.items() if k.startswith("llm."))
