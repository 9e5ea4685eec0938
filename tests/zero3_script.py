"""Run by tests/test_zero3.py as two processes (RANK 0 and 1, DeepSpeed's CPU accelerator, gloo): a phase whose LLM
is deferred builds it in ``configure_model`` inside ``deepspeed.zero.Init``, as Lightning's DeepSpeed strategy runs
that hook under ZeRO-3, loads ``init_from`` into the split weights and freezes. Each rank writes what it holds and
what the gathered weights are, for the test to compare with the same phase built whole."""

import json
import os
import sys
from types import SimpleNamespace

import deepspeed
import hang_watchdog  # noqa: F401  (first: a hang prints every thread's stack; see tests/hang_watchdog.py)
import torch
import torch.distributed as dist

from arrcoc.language_model import LanguageModel
from arrcoc.model import ARRCOCModel
from arrcoc.phases import FinetunePhase
from arrcoc.phases.zero3 import gathered, is_partitioned

CONFIG = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}

if __name__ == "__main__":
    out = sys.argv[1]
    rank = int(os.environ["RANK"])
    deepspeed.init_distributed(dist_backend="gloo")
    torch.manual_seed(0)
    whole = FinetunePhase(ARRCOCModel())  # built at construction, the reference
    ckpt = os.path.join(out, "phase2.ckpt")
    if rank == 0:
        torch.save({"state_dict": {f"model.{k}": v for k, v in whole.model.state_dict().items()}}, ckpt)
    dist.barrier()
    reference = FinetunePhase(ARRCOCModel(), init_from=ckpt)

    torch.manual_seed(1)  # another init: only init_from can make the weights equal
    phase = FinetunePhase(ARRCOCModel(llm=LanguageModel(pretrained="text", deferred=True)), init_from=ckpt)
    before = {"built": phase.model.built, "llm_parameters": sum(1 for _ in phase.model.llm.parameters())}
    phase._trainer = SimpleNamespace(strategy=SimpleNamespace(zero_stage_3=True, config=CONFIG))
    with deepspeed.zero.Init(config_dict_or_path=CONFIG):  # what Lightning's model_sharded_context opens
        phase.configure_model()

    llm = dict(phase.model.llm.named_parameters())
    record = {
        "rank": rank, "world": dist.get_world_size(), "before": before, "built": phase.model.built,
        "report": phase.load_report, "reference_report": reference.load_report,
        "llm_partitioned": sum(is_partitioned(p) for p in llm.values()), "llm_parameters": len(llm),
        "llm_local_numel": sum(p.ds_tensor.numel() for p in llm.values() if is_partitioned(p)),
        "llm_numel": sum(int(getattr(p, "ds_numel", p.numel())) for p in llm.values()),
        "trainable": {n: p.requires_grad for n, p in phase.model.named_parameters()},
        "reference_trainable": {n: p.requires_grad for n, p in reference.model.named_parameters()},
        "hidden_size": phase.model.llm.hidden_size,
    }
    mismatched = []
    ref_params = dict(reference.model.named_parameters())
    for name, param in phase.model.named_parameters():
        with gathered([param]):
            if not torch.equal(param.detach().cpu(), ref_params[name].detach()):
                mismatched.append(name)
    record["mismatched"] = mismatched
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(record, f)
