import pytest
import torch

from arrcoc.data import model_inputs
from arrcoc.language_model import LanguageModel
from arrcoc.packing import IGNORE_INDEX, check_packing, cu_seqlens, length_groups, pack_multimodal, right_padded_lengths
from conftest import make_batch

IMG = 9


def _inputs():
    # sample 0: [5, IMG, 6, 7] (len 4), sample 1: [IMG, 8] + 2 padding
    ids = torch.tensor([[5, IMG, 6, 7], [IMG, 8, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    labels = torch.tensor([[-100, -100, -100, 7], [-100, 8, -100, -100]])
    text = ids.float().unsqueeze(-1).repeat(1, 1, 2)  # [2, 4, 2]: embedding = token id
    visual = torch.tensor([[[100.0, 100], [101, 101], [102, 102]], [[200, 200], [0, 0], [0, 0]]])  # [2, 3, 2]
    vmask = torch.tensor([[True, True, True], [True, False, False]])
    return text, ids, mask, visual, vmask, labels


def test_right_padding_layout():
    text, ids, mask, visual, vmask, labels = _inputs()
    p = pack_multimodal(text, ids, mask, visual, vmask, IMG, labels=labels)
    assert p.embeds.shape == (2, 6, 2)  # sample 0: 3 text + 3 visual = 6; sample 1: 1 + 1 = 2
    assert p.embeds[0, :, 0].tolist() == [5, 100, 101, 102, 6, 7]
    assert p.embeds[1, :2, 0].tolist() == [200, 8]
    assert p.attention_mask.tolist() == [[1] * 6, [1, 1, 0, 0, 0, 0]]
    assert p.position_ids[0].tolist() == list(range(6)) and p.position_ids[1, :2].tolist() == [0, 1]
    assert p.labels.tolist() == [[IGNORE_INDEX] * 5 + [7], [IGNORE_INDEX, 8] + [IGNORE_INDEX] * 4]
    assert p.visual_mask.tolist() == [[False, True, True, True, False, False], [True] + [False] * 5]


def test_left_padding_for_generation():
    text, ids, mask, visual, vmask, _ = _inputs()
    p = pack_multimodal(text, ids, mask, visual, vmask, IMG, padding_side="left")
    assert p.labels is None
    assert p.attention_mask[1].tolist() == [0, 0, 0, 0, 1, 1]
    assert p.embeds[1, 4:, 0].tolist() == [200, 8] and p.position_ids[1, 4:].tolist() == [0, 1]
    with pytest.raises(ValueError, match="padding_side='middle'"):
        pack_multimodal(text, ids, mask, visual, vmask, IMG, padding_side="middle")


def test_two_placeholders_rejected():
    text, ids, mask, visual, vmask, _ = _inputs()
    ids[0, 2] = IMG
    with pytest.raises(ValueError, match=r"input_ids\[0\] holds 2 image placeholder tokens"):
        pack_multimodal(text, ids, mask, visual, vmask, IMG)


# ---------------------------------------------------------------------------- grouped / varlen packing
def test_length_groups_partition_sorted_runs():
    lengths = [400, 64, 70, 390, 200]
    groups = length_groups(lengths, overhead=50)
    assert sorted(i for g in groups for i in g) == list(range(5))
    assert groups == [[1, 2], [4], [3, 0]]  # short pair, the middle one, the long pair
    assert length_groups(lengths, overhead=0) == [[1], [2], [4], [3], [0]]  # no cost per call: no padding
    assert length_groups(lengths, overhead=10**6) == [[1, 2, 4, 3, 0]]  # calls dear: one padded batch
    with pytest.raises(ValueError, match="overhead=-1"):
        length_groups(lengths, overhead=-1)


def test_right_padded_lengths_and_packing_names():
    assert right_padded_lengths(torch.tensor([[1, 1, 0], [1, 1, 1]])).tolist() == [2, 3]
    with pytest.raises(ValueError, match="not right-padded"):
        right_padded_lengths(torch.tensor([[0, 1, 1], [1, 1, 1]]))
    assert cu_seqlens(torch.tensor([3, 1, 2])).tolist() == [0, 3, 4, 6]
    with pytest.raises(ValueError, match=r"llm.packing='ragged'; valid: \['pad', 'group', 'varlen', 'auto'\]"):
        check_packing("ragged")


def _run(model, batch, budget, packing: str, attn: str = "sdpa"):
    """Forward + backward under one packing mode -> (output, gradients of the projector and the LLM)."""
    model.llm.packing = packing
    model.llm.model.set_attn_implementation(attn)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    out = model(**batch, budget=budget)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()
             if p.grad is not None and (n.startswith("projector") or n.startswith("llm"))}
    return out, grads


@pytest.mark.parametrize("packing,attn", [("group", "sdpa"), ("varlen", "sdpa"), ("group", "eager"),
                                          ("varlen", "eager")])
def test_packed_forward_equals_padded(tiny_model, packing, attn):
    """Very different budgets in one batch: grouped and varlen runs give the padded run's loss, answer logits,
    per-sample losses, logits on real tokens and gradients (projector = w.r.t. the visual tokens, LLM)."""
    model = tiny_model
    model.llm.group_overhead = 0  # force one group per distinct length
    batch = model_inputs(make_batch(model, n=4))
    budget = torch.tensor([64, 400, 130, 250])
    ref, ref_grads = _run(model, batch, budget, "pad", attn)
    out, grads = _run(model, batch, budget, packing, attn)
    tol = {"rtol": 1e-4, "atol": 1e-5}
    torch.testing.assert_close(out.loss, ref.loss, **tol)
    torch.testing.assert_close(out.answer_logits, ref.answer_logits, **tol)
    torch.testing.assert_close(out.sample_loss(), ref.sample_loss(), **tol)
    assert torch.equal(out.packed.labels, ref.packed.labels)
    assert torch.equal(out.packed.visual_mask, ref.packed.visual_mask)
    real = ref.packed.attention_mask.bool()  # [B, L]
    assert out.logits.shape == ref.logits.shape
    torch.testing.assert_close(out.logits[real], ref.logits[real], **tol)
    assert ref_grads.keys() == grads.keys() and any(n.startswith("projector") for n in grads)
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], **tol, msg=lambda m, n=name: f"{n}: {m}")


def test_grouping_runs_several_groups_and_auto_resolves(tiny_model):
    lm = tiny_model.llm
    assert lm.packing == "auto" and lm.resolved_packing(torch.device("cpu")) == "group"
    lm.group_overhead = 0
    calls = []
    handle = lm.model.get_decoder().register_forward_pre_hook(lambda mod, args, kw: calls.append(kw["inputs_embeds"]
                                                                                                .shape),
                                                              with_kwargs=True)
    try:
        embeds = torch.randn(3, 10, lm.hidden_size)
        mask = torch.tensor([[1] * 10, [1] * 4 + [0] * 6, [1] * 9 + [0]])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        hidden = lm.packed_hidden_states(embeds, mask, positions)
    finally:
        handle.remove()
    assert sorted(s[:2] for s in calls) == [(1, 4), (1, 9), (1, 10)]
    assert hidden.shape == (3, 10, lm.hidden_size) and (hidden[1, 4:] == 0).all()
    with pytest.raises(ValueError, match="llm.packing='rows'"):
        LanguageModel(packing="rows")


def test_generate_unchanged_by_packing(shared_tiny_model):
    """Generation left-pads and decodes with a KV cache: it always takes the padded path."""
    model = shared_tiny_model
    batch = model_inputs(make_batch(model, n=3))
    budget = torch.tensor([64, 400, 130])
    try:
        model.llm.packing = "pad"
        ref = model.generate(**batch, budget=budget, max_new_tokens=3)
        model.llm.packing = "group"
        out = model.generate(**batch, budget=budget, max_new_tokens=3)
    finally:
        model.llm.packing = "auto"
    assert torch.equal(out.tokens, ref.tokens)
