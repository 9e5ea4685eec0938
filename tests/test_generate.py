import pytest
import torch

from arrcoc.data import model_inputs
from conftest import make_batch


def _naive_greedy(model, batch, steps):
    """Recompute the whole sequence every step (no cache): the reference for the cached loop."""
    from arrcoc.packing import IGNORE_INDEX, pack_multimodal

    mask = batch["attention_mask"] * ((batch["labels"] != IGNORE_INDEX).long().cumsum(-1) == 0).long()
    patches, cls = model._vision(batch["pixel_values"], None, None)
    visual, vmask, _, _ = model._see(batch["pixel_values"], patches, cls, batch["question_ids"],
                                     batch["question_mask"], None, False)
    packed = pack_multimodal(model.llm.embed(batch["input_ids"]), batch["input_ids"], mask, visual, vmask,
                             model.llm.image_token_id, padding_side="left")
    embeds, att, pos = packed.embeds, packed.attention_mask, packed.position_ids
    out = []
    for _ in range(steps):
        hidden = model.llm.hidden_states(embeds, att, pos)
        tok = model.llm.logits(hidden[:, -1]).argmax(-1)
        out.append(tok)
        embeds = torch.cat([embeds, model.llm.embed(tok[:, None])], 1)
        att = torch.cat([att, att.new_ones(att.shape[0], 1)], 1)
        pos = torch.cat([pos, pos[:, -1:] + 1], 1)
    return torch.stack(out, 1)


def test_cached_greedy_equals_recomputation(shared_tiny_model):
    model = shared_tiny_model
    batch = make_batch(model, n=3)
    gen = model.generate(**model_inputs(batch), max_new_tokens=4)
    ref = _naive_greedy(model, batch, gen.tokens.shape[1])
    eos = model.tokenizer.eos_token_id
    for i in range(3):  # equal up to and including the first end-of-sequence token
        row = ref[i].tolist()
        n = row.index(eos) + 1 if eos in row else len(row)
        assert gen.tokens[i, :n].tolist() == row[:n]
    assert len(gen.texts) == 3 and gen.allocation.budget.shape == (3,)


@pytest.mark.slow  # a short training run
def test_answer_is_cut_off_and_learned(tiny_model):
    """After overfitting a batch, greedy decoding from the prompt alone gives the answers."""
    model = tiny_model.train()
    batch = make_batch(model, n=4)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(40):
        out = model(**model_inputs(batch), return_logits=False)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    model.eval()
    gen = model.generate(**model_inputs(batch), max_new_tokens=5)
    assert gen.texts == [a[0] if isinstance(a, list) else a for a in ["red", "3", "no", "yes"]]
