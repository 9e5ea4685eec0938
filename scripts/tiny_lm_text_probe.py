"""Can the tiny LLM, trained from scratch, learn a question-conditioned look-up from text alone?

A diagnostic, not part of training. The scene is given as words instead of an image
("Scene: red circle, blue square. Is there a green object?"), so no encoder, projector or visual
token is involved: if the tiny LLM cannot learn this, it cannot learn the image version either.
Prints held-out accuracy (chance 0.5) as training goes. Answers are "yes"/"no", half each.

    python scripts/tiny_lm_text_probe.py --steps 2000 --lr 2e-3

Measured on the 2-core development machine (2026-11-27), 2 layers at lr 2e-3: chance (0.48-0.52)
at every evaluation up to 12000 steps of batch 64 (768k questions, 22 minutes on one core).
"""

from __future__ import annotations

import argparse
import random
import time

import torch
import torch.nn.functional as F

from arrcoc.data.sample_task import COLORS, list_objects, make_scene
from arrcoc.language_model import LanguageModel


def sample(index: int, split: str, tok) -> tuple[str, str]:
    """(prompt, answer) for one scene of the sample task, described in words, in the chat format."""
    rng = random.Random(f"text-probe/{split}/{index}")
    objs = make_scene(rng, 128)
    present = sorted({o.color for o in objs})
    absent = [c for c in sorted(COLORS) if c not in present]
    color, answer = (rng.choice(absent), "no") if absent and rng.random() < 0.5 else (rng.choice(present), "yes")
    user = [{"role": "user", "content": f"Scene: {list_objects(objs)}. Is there a {color} object?"}]
    return tok.apply_chat_template(user, add_generation_prompt=True, tokenize=False), answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--eval-every", type=int, default=200)
    args = parser.parse_args()
    torch.manual_seed(0)

    lm = LanguageModel()  # the arrcoc-tiny-lm preset, randomly initialised
    tok = lm.tokenizer
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    opt = torch.optim.AdamW(lm.parameters(), lr=args.lr)

    def loss_and_accuracy(indices, split: str):
        prompts, answers = zip(*(sample(i, split, tok) for i in indices), strict=True)
        ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        width = max(map(len, ids))
        batch = torch.full((len(ids), width), tok.pad_token_id)
        mask = torch.zeros_like(batch)
        for row, seq in enumerate(ids):  # left padding: the last column is each prompt's end
            batch[row, width - len(seq):] = torch.tensor(seq)
            mask[row, width - len(seq):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        hidden = lm.hidden_states(lm.embed(batch), mask, positions)[:, -1]  # [B, E]
        logits = lm.logits(hidden)  # [B, V]
        target = torch.tensor([yes if a == "yes" else no for a in answers])
        accuracy = (logits[:, [yes, no]].argmax(-1) == (target == no).long()).float().mean()
        return F.cross_entropy(logits, target), float(accuracy)

    t0 = time.time()
    for step in range(args.steps + 1):
        if step % args.eval_every == 0:
            with torch.no_grad():
                _, acc = loss_and_accuracy(range(500), "val")
            print(f"step {step:6d}  {time.time() - t0:6.0f}s  held-out accuracy {acc:.3f}", flush=True)
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / 50)
        loss, _ = loss_and_accuracy(range(step * args.batch_size, (step + 1) * args.batch_size), "train")
        opt.zero_grad()
        loss.backward()
        opt.step()


if __name__ == "__main__":
    main()
