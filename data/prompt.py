"""VQA prompts: the question (with its ``<image>`` placeholder) in the tokenizer's chat format,
the answer after it, and labels on the answer tokens only."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from arrcoc.processing import IGNORE_INDEX, IMAGE_TOKEN

VQA_INSTRUCTION = "Answer the question using a single word or phrase."


class VQAPromptBuilder:
    """Turns (question, answer) into token ids for :class:`arrcoc.model.ARRCOCModel`.

    Uses the tokenizer's chat template when it has one (the LLaVA-1.5 / VQAv2 convention: image,
    question, then the instruction), a plain ``Question ... Answer:`` layout otherwise.

    Args:
        image_first: the image before the question (LLaVA's order, what pretrained VLM checkpoints
            expect), or after it: then a causal LLM reads every visual token already knowing the
            question (on the tiny preset the measured gain was within noise).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, instruction: str = VQA_INSTRUCTION,
                 max_question_tokens: int = 64, image_first: bool = True) -> None:
        self.tokenizer = tokenizer
        self.instruction = instruction
        self.max_question_tokens = max_question_tokens
        self.image_first = image_first
        self.use_chat = getattr(tokenizer, "chat_template", None) is not None

    def _user_text(self, question: str) -> str:
        if self.image_first:
            return f"{IMAGE_TOKEN}\n{question}\n{self.instruction}"
        return f"{question}\n{self.instruction}\n{IMAGE_TOKEN}"

    def texts(self, question: str, answer: str | None) -> tuple[str, str]:
        """-> (prompt text, answer text); the answer text is empty when ``answer`` is None."""
        tok = self.tokenizer
        if self.use_chat:
            user = [{"role": "user", "content": self._user_text(question)}]
            prompt = tok.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
            if answer is None:
                return prompt, ""
            full = tok.apply_chat_template(user + [{"role": "assistant", "content": answer}], tokenize=False)
            if not full.startswith(prompt):  # templates that rewrite earlier turns: fall back
                return prompt, answer + (tok.eos_token or "")
            return prompt, full[len(prompt):].rstrip("\n")
        prompt = f"{self._user_text(question)}\nAnswer:"
        return prompt, "" if answer is None else f" {answer}{tok.eos_token or ''}"

    def __call__(self, question: str, answer: str | None = None) -> dict[str, torch.Tensor]:
        """-> input_ids [T], labels [T] (answer tokens only), question_ids [Tq]."""
        # LLaVA-style data may carry its own placeholder: the builder places exactly one.
        question = question.replace(IMAGE_TOKEN, "").strip()
        prompt, answer_text = self.texts(question, answer)
        enc = lambda s: self.tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
        prompt_ids, answer_ids = enc(prompt), enc(answer_text) if answer_text else []
        question_ids = enc(question)[: self.max_question_tokens]
        ids = torch.tensor(prompt_ids + answer_ids, dtype=torch.long)
        labels = torch.full_like(ids, IGNORE_INDEX)
        labels[len(prompt_ids):] = ids[len(prompt_ids):]
        return {"input_ids": ids, "labels": labels, "question_ids": torch.tensor(question_ids, dtype=torch.long)}
