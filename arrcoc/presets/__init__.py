"""The embedded presets: their names and where their shipped weights live.

``arrcoc-tiny-vit`` (an open_clip model config in this folder) and ``arrcoc-tiny-lm`` (a small
Llama-style decoder with a locally built tokenizer) run everything offline. Their shipped weights are
the output of ``arrcoc pretrain-encoder`` and ``arrcoc pretrain-lm`` (see :mod:`arrcoc.pretrain`),
each with the recipe that made it. Both the model and the data path read names from here; this module
imports nothing of arrcoc.
"""

from __future__ import annotations

from pathlib import Path

PRESET_DIR = Path(__file__).resolve().parent

TINY_ENCODER = "arrcoc-tiny-vit"
TINY_LM = "arrcoc-tiny-lm"

#: ``VisionEncoder(TINY_ENCODER, pretrained=SHAPES_TAG)``: the tiny encoder pretrained on the sample task.
SHAPES_TAG = "shapes"
#: ``LanguageModel(TINY_LM, pretrained=TEXT_TAG)``: the tiny LLM pretrained on the sample task's text.
TEXT_TAG = "text"

#: An ordinary open_clip checkpoint; its recipe (command, machine, held-out accuracy) is the ``.recipe.json`` beside it.
SHAPES_WEIGHTS = PRESET_DIR / f"{TINY_ENCODER}-{SHAPES_TAG}.pt"
#: A transformers checkpoint directory (``config.json``, ``model.safetensors``, ``recipe.json``).
TEXT_WEIGHTS = PRESET_DIR / f"{TINY_LM}-{TEXT_TAG}"


def register_encoder_presets() -> None:
    """Register the embedded encoder configs with open_clip (idempotent), so ``arrcoc-tiny-vit`` is an
    ordinary open_clip model name for ``create_model`` and its preprocessing."""
    import open_clip

    if TINY_ENCODER not in open_clip.list_models():
        open_clip.add_model_config(PRESET_DIR / f"{TINY_ENCODER}.json")


def shapes_checkpoint() -> Path:
    """The tiny encoder's shipped weights (``pretrained: shapes``), an ordinary open_clip checkpoint."""
    if not SHAPES_WEIGHTS.is_file():
        raise FileNotFoundError(
            f"pretrained={SHAPES_TAG!r}: the shipped tiny-encoder weights {SHAPES_WEIGHTS} are missing; remake them "
            f"with `arrcoc pretrain-encoder --out {SHAPES_WEIGHTS}` (recipe in "
            f"{SHAPES_WEIGHTS.with_suffix('.recipe.json').name}) or give `pretrained` a checkpoint path")
    return SHAPES_WEIGHTS


def text_checkpoint() -> Path:
    """The tiny LLM's shipped weights (``pretrained: text``), a transformers checkpoint directory."""
    if not (TEXT_WEIGHTS / "config.json").is_file():
        raise FileNotFoundError(
            f"pretrained={TEXT_TAG!r}: the shipped tiny-LLM weights {TEXT_WEIGHTS} are missing; remake them with "
            f"`arrcoc pretrain-lm --out {TEXT_WEIGHTS}` (recipe in {TEXT_WEIGHTS / 'recipe.json'}) or give "
            "`pretrained` a checkpoint directory")
    return TEXT_WEIGHTS
