"""Is the relevance target question-specific for this model? (docs/BENCHMARKS.md, issue 17, point 2)

For the first 100 validation questions of the sample task: the all-token model's gradient saliency (what phase 2
distils into the relevance map, `arrcoc.phases.objectives.full_token_teacher`) with the sample's own question
and with the next sample's question and answer on the same image; its mass per patch on the named objects, the
other objects and the background, and the share of named-object patches among its top |named| patches.

    python scripts/teacher_question_use.py runs/demo/phase1/checkpoints/last.ckpt
"""

from __future__ import annotations

import sys

import torch

from arrcoc.data import model_inputs
from arrcoc.phases.objectives import full_token_teacher
from arrcoc.processing import patch_masks
from arrcoc.train.cli import build_cli

TEXT = ("input_ids", "attention_mask", "labels", "question_ids", "question_mask")


def main(ckpt: str, batches: int = 4) -> None:
    cli = build_cli(["--config", "configs/phase3.yaml", "--model.init_args.init_from", ckpt,
                     "--data.sample_task.train", "16", "--data.sample_task.val", "500", "--data.num_workers", "0",
                     "--data.eval_batch_size", "25"], run=False)
    model, dm = cli.model.model.eval(), cli.datamodule
    dm.prepare_data()
    dm.setup("validate")
    mass = {k: 0.0 for k in ("named", "other", "bg", "swapped_named", "swapped_other")}
    count = {k: 0 for k in ("named", "other", "bg")}
    precision, swapped_precision, samples = 0.0, 0.0, 0
    for i, batch in enumerate(dm.val_dataloader()):
        if i >= batches:
            break
        inputs = model_inputs(batch)
        with torch.no_grad():
            seen = model.encoder(inputs["pixel_values"])  # encoded once, for both questions
        feats, cls = seen.flat(), seen.cls  # [B, N, D], [B, D]
        own = full_token_teacher(model, inputs, feats, cls, saliency=True).saliency  # [B, N]
        other_q = inputs | {k: inputs[k].roll(1, 0) for k in TEXT}  # the next sample's question and answer
        swapped = full_token_teacher(model, other_q, feats, cls, saliency=True).saliency
        for b, objs in enumerate(batch["objects"]):
            named, other = patch_masks(objs, model.encoder.grid)
            if not named.any():
                continue
            bg = ~(named | other)
            for key, m in (("named", named), ("other", other), ("bg", bg)):
                mass[key] += float(own[b][m].sum())
                count[key] += int(m.sum())
            mass["swapped_named"] += float(swapped[b][named].sum())
            mass["swapped_other"] += float(swapped[b][other].sum())
            k = int(named.sum())
            precision += float(named[own[b].topk(k).indices].float().mean())
            swapped_precision += float(named[swapped[b].topk(k).indices].float().mean())
            samples += 1
    print(f"{samples} questions naming an object")
    per = {k: mass[k] / count[k] for k in ("named", "other", "bg")}
    print(f"saliency mass per patch: named {per['named']:.4f}, other objects {per['other']:.4f}, "
          f"background {per['bg']:.4f}")
    print(f"with another sample's question: named {mass['swapped_named'] / count['named']:.4f}, "
          f"other objects {mass['swapped_other'] / count['other']:.4f}")
    chance = count["named"] / (count["named"] + count["other"])
    print(f"named-object share of the top-|named| patches: own question {precision / samples:.3f}, another "
          f"question {swapped_precision / samples:.3f}; named share of object patches (chance) {chance:.3f}")

if __name__ == "__main__":
    main(sys.argv[1])
