"""Pretraining the embedded tiny LLM on text, so the offline default starts from a language model.

Real presets start from a pretrained LLM; the tiny preset cannot download one, and a 2-layer decoder
trained from scratch in the demo's phases takes little from the image (the README's demo section
compares both starts). This module gives the tiny LLM what a real one brings, a reader of the task's
language, with arrcoc's own code and data: the sample task's questions in the same VQA chat prompt,
with the scene written out in words where the image goes
("<|user|>\\n red circle, blue square.\\nIs there a red circle?\\n..."). No image is seen.

The result is an ordinary transformers checkpoint (``config.json`` + ``model.safetensors``), loaded
through ``from_pretrained`` exactly as a real preset's LLM is; the tiny preset's ``pretrained: text``
weights are this module's output, shipped in ``presets/`` with their recipe (``recipe.json``: the
command, the machine and the held-out accuracy per question type). Reproduce:
``arrcoc pretrain-lm --out arrcoc/presets/arrcoc-tiny-lm-text --steps 4000`` (about 11 minutes on one
CPU core).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

from arrcoc.console import console_logging
from arrcoc.data.prompt import VQAPromptBuilder
from arrcoc.data.sample_task import KINDS, ask, list_objects, make_scene
from arrcoc.language_model import LanguageModel
from arrcoc.presets import TEXT_WEIGHTS
from arrcoc.processing import IGNORE_INDEX, IMAGE_TOKEN

log = logging.getLogger("arrcoc")




def text_sample(rng: random.Random, prompts: VQAPromptBuilder,
                max_objects: int = 8) -> tuple[list[int], list[int], str]:
    """One question of the sample task about a scene described in words -> (ids, labels, kind).

    The scene keeps 1..``max_objects`` of a generated scene's objects, listed left to right (so
    "left of" is answerable from the order, "above" is not: those questions teach the prior only)."""
    objs = make_scene(rng, 128)
    objs = rng.sample(objs, rng.randint(1, min(max_objects, len(objs))))
    kind = rng.choice(KINDS)
    question, answer, _, _ = ask(objs, rng, kind)
    enc = prompts(question, answer)
    ids, labels = enc["input_ids"].tolist(), enc["labels"].tolist()
    at = ids.index(prompts.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
    scene = prompts.tokenizer(f" {list_objects(objs)}.", add_special_tokens=False)["input_ids"]
    return ids[:at] + scene + ids[at + 1:], labels[:at] + [IGNORE_INDEX] * len(scene) + labels[at + 1:], kind


def _collate(items, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids, _, _ in items)
    ids = torch.full((len(items), width), pad_id)
    labels = torch.full_like(ids, IGNORE_INDEX)
    mask = torch.zeros_like(ids)
    for row, (seq, lab, _) in enumerate(items):  # right padding: training only, no generation
        ids[row, :len(seq)], labels[row, :len(seq)], mask[row, :len(seq)] = torch.tensor(seq), torch.tensor(lab), 1
    return ids, labels, mask


def _answer_loss(lm, ids, labels, mask) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean answer-token cross-entropy, and per-sample exact match of every answer token [B]."""
    hidden = lm.hidden_states(lm.embed(ids), mask, (mask.cumsum(-1) - 1).clamp(min=0))  # [B, T, E]
    logits, target = lm.logits(hidden[:, :-1]), labels[:, 1:]  # [B, T-1, V], [B, T-1]
    loss = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=IGNORE_INDEX)
    exact = ((logits.argmax(-1) == target) | (target == IGNORE_INDEX)).all(-1)
    return loss, exact


def heldout_accuracy(lm, samples: list, chunk: int = 200) -> dict[str, float]:
    """Exact match of every answer token, per question kind, over ``text_sample`` items (eval mode,
    no gradient; the model's train/eval mode is restored)."""
    was_training = lm.training
    lm.eval()
    hits: dict[str, list[bool]] = defaultdict(list)
    with torch.no_grad():
        for start in range(0, len(samples), chunk):
            part = samples[start:start + chunk]
            _, exact = _answer_loss(lm, *_collate(part, lm.tokenizer.pad_token_id))
            for ok, (_, _, kind) in zip(exact.tolist(), part, strict=True):
                hits[kind].append(ok)
    lm.train(was_training)
    return {k: sum(v) / len(v) for k, v in sorted(hits.items())}


def pretrain(out: Path, steps: int = 4000, seed: int = 0, batch_size: int = 64, lr: float = 1e-3,
             warmup: int = 100, heldout: int = 800, eval_every: int = 500,
             image_first: bool = True, command: str | None = None) -> dict[str, float]:
    """Train ``arrcoc-tiny-lm`` from random init on worded scenes; save it with ``save_pretrained`` to
    the directory ``out`` with ``recipe.json``. Returns held-out exact-match accuracy per question kind."""
    torch.manual_seed(seed)
    lm = LanguageModel()
    prompts = VQAPromptBuilder(lm.tokenizer, image_first=image_first)
    pad = lm.tokenizer.pad_token_id
    held = [text_sample(random.Random(f"arrcoc-pretrain-lm/heldout/{i}"), prompts) for i in range(heldout)]
    opt = torch.optim.AdamW(lm.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))

    t0 = time.perf_counter()
    for step in range(steps):
        rng = random.Random(f"arrcoc-pretrain-lm/{seed}/train/{step}")
        loss, _ = _answer_loss(lm, *_collate([text_sample(rng, prompts) for _ in range(batch_size)], pad))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        sched.step()
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            acc = heldout_accuracy(lm, held)
            log.info("pretrain-lm step %d/%d loss %.3f held-out %s (%.0f s)", step + 1, steps, loss.item(),
                     " ".join(f"{k} {v:.2f}" for k, v in acc.items()), time.perf_counter() - t0)
    stats = {**heldout_accuracy(lm, held), "seconds": time.perf_counter() - t0}
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    lm.model.save_pretrained(tmp)
    recipe = {"command": command, "steps": steps, "seed": seed, "batch_size": batch_size, "lr": lr,
              "warmup": warmup, "image_first": image_first, "torch": torch.__version__, "held_out_exact_match": stats}
    (tmp / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out)
    return stats


def main(argv: list[str] | None = None) -> int:
    console_logging()
    p = argparse.ArgumentParser(prog="arrcoc pretrain-lm", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help=f"checkpoint directory (the preset's own: {TEXT_WEIGHTS})")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--question-first", action="store_true",
                   help="the scene after the question, for data.image_first: false")
    args = p.parse_args(argv)
    stats = pretrain(args.out, steps=args.steps, seed=args.seed, batch_size=args.batch_size, lr=args.lr,
                     eval_every=args.eval_every, image_first=not args.question_first,
                     command=" ".join(["arrcoc pretrain-lm", *(sys.argv[1:] if argv is None else argv)]))
    print(f"saved {args.out}: " + ", ".join(f"{k} {v:.3f}" for k, v in stats.items()))
    return 0
