import torch

from arrcoc.data import VQAPromptBuilder, collate_vqa
from arrcoc.language_model import LanguageModel
from arrcoc.processing import IGNORE_INDEX
from arrcoc.processing.tiny_tokenizer import build_tiny_tokenizer


def test_labels_only_on_answer_tokens():
    tok = build_tiny_tokenizer()
    s = VQAPromptBuilder(tok)("What color is the triangle?", "dark red")
    supervised = s["input_ids"][s["labels"] != IGNORE_INDEX]
    assert tok.decode(supervised) == "dark red</s>"  # the answer and the end of the turn
    prompt = tok.decode(s["input_ids"][s["labels"] == IGNORE_INDEX])
    assert "<image>" in prompt and "What color is the triangle?" in prompt
    assert "Answer the question using a single word or phrase." in prompt
    assert tok.decode(s["question_ids"]) == "What color is the triangle?"


def test_image_after_the_question_when_asked():
    tok = build_tiny_tokenizer()
    first = tok.decode(VQAPromptBuilder(tok)("What color is the triangle?")["input_ids"])
    last = tok.decode(VQAPromptBuilder(tok, image_first=False)("What color is the triangle?")["input_ids"])
    assert first.index("<image>") < first.index("triangle") < first.index("single word")
    assert last.index("triangle") < last.index("single word") < last.index("<image>") < last.index("<|assistant|>")


def test_without_chat_template_and_empty_question():
    tok = build_tiny_tokenizer()
    tok.chat_template = None
    b = VQAPromptBuilder(tok)
    s = b("", "yes")
    assert s["question_ids"].numel() == 0
    assert tok.decode(s["input_ids"][s["labels"] != IGNORE_INDEX]) == " yes</s>"
    assert tok.decode(b("Is it?")["input_ids"]).endswith("Answer:")


def test_tokenizer_is_deterministic_and_lossless():
    a, b = build_tiny_tokenizer(), build_tiny_tokenizer()
    assert a.get_vocab() == b.get_vocab()
    text = "Wie viele Kreise? 日本語 ☃ and how many circles"
    assert a.decode(a(text, add_special_tokens=False)["input_ids"]) == text
    assert len(a("how many red circles", add_special_tokens=False)["input_ids"]) == 4  # whole words


def test_collate_pads_and_masks():
    lm = LanguageModel()
    build = VQAPromptBuilder(lm.tokenizer)
    samples = [build("Is it red?", "yes"), build("", "no")]
    for s in samples:
        s["pixel_values"] = torch.zeros(3, 96, 96)
    batch = collate_vqa(samples, lm.tokenizer.pad_token_id)
    assert batch["pixel_values"].shape == (2, 3, 96, 96)
    assert batch["question_mask"].tolist()[1] == [False] * batch["question_ids"].shape[1]
    lengths = batch["attention_mask"].sum(-1)
    assert lengths.tolist() == [len(s["input_ids"]) for s in samples]
    short = int(lengths.argmin())
    assert (batch["labels"][short, lengths[short]:] == IGNORE_INDEX).all()


def test_placeholder_in_question_text_is_not_duplicated():
    tok = build_tiny_tokenizer()
    s = VQAPromptBuilder(tok)("<image>\nWhat shape is red?", "circle")
    image_id = tok.convert_tokens_to_ids("<image>")
    assert int((s["input_ids"] == image_id).sum()) == 1
    assert tok.decode(s["question_ids"]) == "What shape is red?"
