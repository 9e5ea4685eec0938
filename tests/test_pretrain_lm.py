"""The tiny LLM's text pretraining (``arrcoc pretrain-lm``) and its shipped ``pretrained: text`` weights."""

import random
from pathlib import Path

import pytest
import torch

from arrcoc.data.prompt import VQAPromptBuilder
from arrcoc.data.sample_task import KINDS
from arrcoc.language_model import LanguageModel
from arrcoc.presets import text_checkpoint
from arrcoc.pretrain.lm import heldout_accuracy, pretrain, text_sample
from arrcoc.processing.tiny_tokenizer import IMAGE_TOKEN

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _heldout_accuracy(lm: LanguageModel, n: int = 400) -> dict[str, float]:
    prompts = VQAPromptBuilder(lm.tokenizer)
    return heldout_accuracy(lm, [text_sample(random.Random(f"test-tiny-lm/{i}"), prompts) for i in range(n)])


def test_text_sample_puts_the_worded_scene_where_the_image_goes():
    lm = LanguageModel()
    ids, labels, kind = text_sample(random.Random(0), VQAPromptBuilder(lm.tokenizer))
    text = lm.tokenizer.decode(ids)
    assert IMAGE_TOKEN not in text and text.startswith("<|user|>\n ") and kind in KINDS
    answer = lm.tokenizer.decode([t for t, lab in zip(ids, labels, strict=True) if lab != -100])
    assert answer.endswith("</s>") and len(answer) > len("</s>")  # only the answer (and its end) is supervised


@pytest.mark.slow  # a pretraining run
def test_pretraining_learns_and_loads_through_from_pretrained(tmp_path):
    torch.manual_seed(0)
    before = _heldout_accuracy(LanguageModel(), n=200)
    stats = pretrain(tmp_path / "lm", steps=150, batch_size=32, heldout=200, eval_every=1000)
    # 7 colours: a random answer is right 1/7 of the time, and the untrained model is right never
    assert stats["attribute"] > 0.3 > before["attribute"], (before, stats)
    assert (tmp_path / "lm" / "recipe.json").is_file()
    lm = LanguageModel(pretrained=str(tmp_path / "lm"))
    assert lm.pretrained == str(tmp_path / "lm")
    assert _heldout_accuracy(lm, n=200)["attribute"] == pytest.approx(stats["attribute"], abs=0.1)


def test_shipped_weights_load_by_tag_and_read_worded_scenes():
    """The shipped LLM answers questions about scenes in words on fresh samples far above chance
    (exact match: colours 1/7, yes/no 1/2; counts are mostly 0-2)."""
    from safetensors.torch import load_file

    lm = LanguageModel(pretrained="text")
    saved = load_file(text_checkpoint() / "model.safetensors")
    assert torch.equal(lm.model.get_input_embeddings().weight, saved["model.embed_tokens.weight"])
    acc = _heldout_accuracy(lm)
    assert acc["count"] > 0.8 and acc["existence"] > 0.7 and acc["attribute"] > 0.4, acc


def test_pretrained_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match=r"llm.pretrained='text' applies to arrcoc-tiny-lm only"):
        LanguageModel(str(tmp_path), pretrained="text")
    with pytest.raises(FileNotFoundError, match=r"llm.pretrained='.*nowhere' is neither 'text'"):
        LanguageModel(pretrained=str(tmp_path / "nowhere"))
