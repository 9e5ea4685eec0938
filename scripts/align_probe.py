"""Does phase 1 teach the tiny model to use the image? A fast probe on cached encoder features.

Phase 1 keeps the encoder frozen, so its features can be computed once and phase-1-like training
(projector, 2-D positions and the LLM at all 576 tokens, the phase's learning rates and schedule) run
without it. Prints exact-match accuracy per question type on the demo's 500 validation questions every
``--eval-every`` steps; ``--shuffled`` also evaluates with another sample's image (how much the image is
used at all). The variants are the ones docs/BENCHMARKS.md reports ("Why the demo model does not use
the image"):

    python scripts/align_probe.py --cache /tmp/probe                      # as phase 1 (token-mean loss)
    python scripts/align_probe.py --cache /tmp/probe --sample-mean        # each sample weighs the same
    python scripts/align_probe.py --cache /tmp/probe --sample-mean --question-first --llm none --lr-llm 1e-3
    python scripts/align_probe.py --cache /tmp/probe --sample-mean --lr-llm 0   # LLM frozen (LLaVA stage 1)

The first run writes the feature cache (about 1.5 GB, 3 minutes on 2 cores); later runs reuse it.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from torch.nn.utils.rnn import pad_sequence

from arrcoc.encoder import VisionEncoder
from arrcoc.language_model import LanguageModel
from arrcoc.model import ARRCOCModel
from data.collate import MODEL_KEYS
from data.datamodule import VQADataModule
from data.prompt import VQAPromptBuilder
from data.sample_task import SampleTaskConfig


def cache(path: Path) -> tuple[list[dict], list[dict]]:
    """The demo's training epoch (20000 samples, batches of 16) and validation (500) with features in
    place of pixels (float16), computed once."""
    if (path / "train.pt").is_file():
        return (torch.load(path / "train.pt", weights_only=False), torch.load(path / "val.pt", weights_only=False))
    path.mkdir(parents=True, exist_ok=True)
    dm = VQADataModule(sample_task=SampleTaskConfig(train=20000, val=500), batch_size=16, eval_batch_size=50,
                       num_workers=1, samples_per_epoch=20000)
    dm.prepare_data()
    dm.setup()
    enc = VisionEncoder("arrcoc-tiny-vit", pretrained="shapes").eval()
    out = {}
    for split, loader in (("val", dm.val_dataloader()), ("train", dm.train_dataloader())):
        batches = []
        with torch.no_grad():
            for b in loader:
                o = enc(b.pop("pixel_values"))
                b["patch_features"] = o.flat().half()  # [B, N, D]
                b["cls_features"] = None if o.cls is None else o.cls.half()  # [B, D]
                batches.append(b)
        torch.save(batches, path / f"{split}.pt")
        out[split] = batches
    return out["train"], out["val"]


def question_first(batches: list[dict], tokenizer) -> None:
    """Rebuild each batch's prompt with the question before the image (``data.image_first: false``)."""
    prompts = VQAPromptBuilder(tokenizer, image_first=False)
    for b in batches:
        enc = [prompts(q, a[0]) for q, a in zip(b["question"], b["answers"], strict=True)]
        ids = [e["input_ids"] for e in enc]
        b["input_ids"] = pad_sequence(ids, batch_first=True, padding_value=tokenizer.pad_token_id)
        b["attention_mask"] = pad_sequence([torch.ones_like(i) for i in ids], batch_first=True)
        b["labels"] = pad_sequence([e["labels"] for e in enc], batch_first=True, padding_value=-100)


def inputs(b: dict, shuffled: bool = False) -> dict:
    x = {k: b[k] for k in MODEL_KEYS if b.get(k) is not None}
    x["patch_features"] = x["patch_features"].float()
    if "cls_features" in x:
        x["cls_features"] = x["cls_features"].float()
    if shuffled:  # another sample's image
        x["patch_features"] = x["patch_features"].roll(1, 0)
        x.pop("cls_features", None)
    return x


@torch.no_grad()
def evaluate(model: ARRCOCModel, val: list[dict], shuffled: bool = False) -> dict[str, float]:
    """Exact match of every answer token (teacher-forced), per question type and overall."""
    model.eval()
    hits: dict[str, list[bool]] = {}
    for b in val:
        out = model(**inputs(b, shuffled))
        labels = out.packed.labels[:, 1:]  # [B, L-1]
        ok = ((out.logits[:, :-1].argmax(-1) == labels) | (labels == -100)).all(-1)  # [B]
        for kind, hit in zip(b["question_type"], ok.tolist(), strict=True):
            hits.setdefault(kind, []).append(hit)
    model.train()
    acc = {k: sum(v) / len(v) for k, v in sorted(hits.items())}
    acc["all"] = sum(map(sum, hits.values())) / sum(map(len, hits.values()))
    return acc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--lr-llm", type=float, default=5e-4)
    p.add_argument("--lr-proj", type=float, default=2e-3, help="projector and 2-D positions")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--llm", default="text", help="the tiny LLM's weights: text (shipped) or none (random)")
    p.add_argument("--sample-mean", action="store_true", help="average the loss per sample, then over samples")
    p.add_argument("--question-first", action="store_true")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--shuffled", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    train, val = cache(a.cache)
    llm = LanguageModel("arrcoc-tiny-lm", pretrained=None if a.llm == "none" else a.llm)
    if a.question_first:
        question_first(train + val, llm.tokenizer)
    model = ARRCOCModel(encoder=VisionEncoder("arrcoc-tiny-vit", pretrained="shapes"), llm=llm, full_tokens=True)
    groups = [{"params": [*model.projector.parameters(), *model.positions.parameters()], "base": a.lr_proj},
              {"params": list(model.llm.parameters()), "base": a.lr_llm}]
    opt = torch.optim.AdamW([{**g, "lr": g["base"]} for g in groups], weight_decay=0.0)

    def factor(step: int) -> float:  # the phases' schedule: linear warm-up, cosine to 0.1
        if step < a.warmup:
            return (step + 1) / a.warmup
        t = (step - a.warmup) / max(1, a.steps - a.warmup)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * t))

    model.train()
    t0, losses = time.perf_counter(), []
    for step in range(a.steps):
        b = train[step % len(train)]
        for g in opt.param_groups:
            g["lr"] = g["base"] * factor(step)
        out = model(**inputs(b))
        loss = out.sample_loss().mean() if a.sample_mean else out.loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if (step + 1) % a.eval_every == 0 or step + 1 == a.steps:
            acc = evaluate(model, val)
            print(f"step {step + 1} loss {sum(losses[-50:]) / len(losses[-50:]):.3f} "
                  f"({time.perf_counter() - t0:.0f} s) " + " ".join(f"{k} {v:.3f}" for k, v in acc.items()), flush=True)
    if a.shuffled:
        print("shuffled images: " + " ".join(f"{k} {v:.3f}" for k, v in evaluate(model, val, True).items()))


if __name__ == "__main__":
    main()
