"""``arrcoc visualize``: where the allocation looks, for any image and question(s).

One column per question: the image as the encoder sees it (its crop), the kept patches outlined and the dropped
ones dimmed; below it each scorer's map and the balanced map the allocator ranked by; above it the question,
the answer, the budget k and the balancer's weights. With two or more questions the columns sit side by side:
the query-swap view, which shows whether the selection follows the question.

    arrcoc visualize --config configs/phase3.yaml --ckpt runs/phase3/checkpoints/last.ckpt \\
        --image photo.jpg --question "What color is the car?" --question "How many people are there?" \\
        --out swap.png
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from arrcoc.console import console_logging, quiet_libraries
from arrcoc.data.prompt import VQAPromptBuilder
from arrcoc.figures import Column, columns_of, figure
from arrcoc.model import ARRCOCModel
from arrcoc.processing.files import atomic_path


def load_image(path: Path) -> Image.Image:
    """Any image file PIL reads (any size, any mode) as RGB; a clear error naming the file otherwise."""
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"--image {path} does not exist") from None
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"--image {path} is not an image PIL can read ({err.__class__.__name__}: {err}); give a "
                         "JPEG, PNG, WebP, ... file") from None


@torch.no_grad()
def allocate(model: ARRCOCModel, image: Image.Image, questions: list[str], budget: int | None = None,
             max_new_tokens: int = 8) -> tuple[torch.Tensor, list[Column]]:
    """The encoder's input [3, S, S] and, per question, the answer and the allocation (one batch, eval mode)."""
    model.eval()
    prompts = VQAPromptBuilder(model.tokenizer)
    pixels = model.encoder.transform(image)  # [3, S, S]
    enc = [prompts(q) for q in questions]
    pad = model.tokenizer.pad_token_id

    def stack(key: str, value: int) -> torch.Tensor:
        return torch.nn.utils.rnn.pad_sequence([e[key] for e in enc], batch_first=True, padding_value=value)

    ids = stack("input_ids", pad)  # [Q, T]
    mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(e["input_ids"]) for e in enc], batch_first=True)
    q_ids = stack("question_ids", pad)  # [Q, Tq]
    q_mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(e["question_ids"], dtype=torch.bool) for e in enc],
                                             batch_first=True)
    out = model.generate(ids, mask, pixel_values=pixels.expand(len(questions), -1, -1, -1), question_ids=q_ids,
                         question_mask=q_mask, budget=budget, max_new_tokens=max_new_tokens)
    return pixels, columns_of(out, questions)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="arrcoc visualize", description=__doc__.splitlines()[0])
    p.add_argument("--config", action="append", required=True, help="the phase config(s) of the model")
    p.add_argument("--ckpt", type=Path, required=True, help="its checkpoint (e.g. runs/phase3/checkpoints/last.ckpt)")
    p.add_argument("--image", type=Path, required=True, help="any image file")
    p.add_argument("--question", action="append", required=True, help="a question (repeat: the query-swap view)")
    p.add_argument("--out", type=Path, required=True, help="the PNG to write")
    p.add_argument("--budget", type=int, default=None, help="keep this many patches instead of the budget head's")
    p.epilog = "Other options are config overrides, as for arrcoc validate."
    args, overrides = p.parse_known_args(sys.argv[2:] if argv is None else argv)
    if not args.ckpt.is_file():
        p.error(f"--ckpt {args.ckpt} does not exist (give a checkpoint file such as runs/phase3/checkpoints/last.ckpt)")
    console_logging()
    quiet_libraries()
    try:
        image = load_image(args.image)
    except (FileNotFoundError, ValueError) as err:
        print(f"arrcoc visualize: {err}", file=sys.stderr)
        return 2
    from arrcoc.train.cli import build_cli

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    argv_cli = [a for c in args.config for a in ("--config", c)]
    argv_cli += ["--model.init_args.init_from", str(args.ckpt), "--trainer.default_root_dir",
                 str(args.out.parent / ".arrcoc-visualize"), *overrides]
    phase = build_cli(argv_cli, run=False).model
    phase.configure_model()  # builds an LLM the config defers (llm.deferred: the ZeRO-3 layers), loads init_from
    model = phase.model
    pixels, columns = allocate(model, image, args.question, args.budget)
    fig = figure(model, pixels, columns)
    with atomic_path(args.out) as tmp:
        fig.savefig(tmp, format="png", dpi=130)
    for col in columns:
        print(f"{col.question!r}: {col.answer!r}, k = {col.record.budget}")
    print(f"wrote {args.out}")
    return 0
