import json

import open_clip
import pytest
import torch

from arrcoc.allocator import TokenAllocator
from arrcoc.data import collate_vqa
from arrcoc.model import ARRCOCModel
from arrcoc.processing import IGNORE_INDEX
from conftest import QUESTIONS, make_batch, make_samples


def small_grid_model(tmp_path, **kw) -> ARRCOCModel:
    """An 8x8 = 64-patch encoder registered like any open_clip config (a non-576 grid)."""
    cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 48, "head_width": 16,
                                           "patch_size": 4, "mlp_ratio": 2.0},
           "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 1, "layers": 1}}
    path = tmp_path / "arrcoc-test-8x8.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    return ARRCOCModel(encoder="arrcoc-test-8x8", **kw)


def test_shapes_tiny_576(tiny_model):
    batch = make_batch(tiny_model, n=4)
    out = tiny_model(**batch)
    alloc = out.allocation
    n = 576
    assert alloc.keep_mask.shape == (4, n) and alloc.scorer_maps.shape == (4, 3, n)
    assert alloc.weights.shape == (4, 3) and torch.allclose(alloc.weights.sum(-1), torch.ones(4))
    assert alloc.scorer_names == ["propositional", "perspectival", "participatory"]
    assert (alloc.keep_mask.sum(-1) == alloc.budget).all()
    # Every sample's sequence: its text minus the placeholder, plus its visual tokens.
    text_len = batch["attention_mask"].sum(-1)
    seq_len = out.packed.attention_mask.sum(-1)
    assert torch.equal(seq_len, text_len - 1 + alloc.visual_tokens)
    assert torch.equal(out.packed.visual_mask.sum(-1), alloc.visual_tokens)
    assert out.logits.shape == (4, int(seq_len.max()), len(tiny_model.tokenizer))
    m = int((batch["labels"] != IGNORE_INDEX).sum())
    assert out.answer_logits.shape == (m, len(tiny_model.tokenizer)) and out.answer_targets.shape == (m,)
    assert torch.isfinite(out.loss)
    rec = alloc.records()[1]
    assert rec.kept_indices.shape == (rec.budget,) and torch.equal(rec.kept_indices, rec.kept_indices.sort().values)
    assert set(rec.scorer_maps) == set(rec.weights) == set(alloc.scorer_names)
    assert rec.scorer_maps["participatory"].shape == (n,)
    assert rec.summary_tokens == 1 and rec.visual_tokens == rec.budget + 1


def test_shapes_other_grid(tmp_path):
    model = small_grid_model(tmp_path, min_tokens=8, max_tokens=48, target_tokens=20, summary_grid=2)
    assert model.encoder.grid == (8, 8)
    batch = make_batch(model, n=3)
    batch["pixel_values"] = torch.nn.functional.interpolate(batch["pixel_values"], size=32)
    out = model(**batch)
    assert out.allocation.keep_mask.shape == (3, 64)
    assert ((out.allocation.budget >= 8) & (out.allocation.budget <= 48)).all()
    assert out.allocation.summary_valid.shape == (3, 4)


def test_per_sample_independence(shared_tiny_model):
    """A sample's scores, budget and kept set do not depend on its batch partners."""
    model = shared_tiny_model
    target = make_samples(model, [QUESTIONS[0]], [7])
    partners_a = make_samples(model, QUESTIONS[1:3], [11, 12])
    partners_b = make_samples(model, [QUESTIONS[4], QUESTIONS[3], QUESTIONS[2]], [21, 22, 23])
    pad = model.tokenizer.pad_token_id
    with torch.no_grad():
        alone = model(**collate_vqa(target, pad)).allocation
        with_a = model(**collate_vqa(partners_a + target, pad)).allocation
        with_b = model(**collate_vqa(target + partners_b, pad)).allocation
    for other, i in ((with_a, 2), (with_b, 0)):
        assert torch.allclose(other.scorer_maps[i], alone.scorer_maps[0], atol=1e-4)
        assert torch.allclose(other.weights[i], alone.weights[0], atol=1e-5)
        assert int(other.budget[i]) == int(alone.budget[0])
        assert torch.equal(other.keep_mask[i], alone.keep_mask[0])


def test_llm_never_attends_to_padding(shared_tiny_model):
    """A sample's answer logits are the same alone and next to a longer partner (padding masked)."""
    model = shared_tiny_model
    pad = model.tokenizer.pad_token_id
    short = make_samples(model, [("Is it red?", "yes")], [3])
    long = make_samples(model, [(QUESTIONS[4][0] + " Please look closely at the whole image.", "circle")], [4])
    with torch.no_grad():
        alone = model(**collate_vqa(short, pad), budget=300)
        both = model(**collate_vqa(short + long, pad), budget=torch.tensor([300, 64]))
    m = alone.answer_logits.shape[0]
    assert torch.allclose(both.answer_logits[:m], alone.answer_logits, atol=1e-4)


def test_gradient_reaches_every_allocation_parameter(tiny_model):
    """One backward of the LM loss alone: non-zero gradients on every trainable allocation, position,
    summary and projector parameter; none on the frozen encoder."""
    model = tiny_model.train()
    out = model(**make_batch(model, n=4))
    out.lm_loss.backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("llm.")}
    assert any(n.startswith("scorers.") for n in trainable) and any(n.startswith("allocator.") for n in trainable)
    missing = [n for n, p in trainable.items() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"no gradient from the LM loss: {missing}"
    assert all(p.grad is None for p in model.encoder.parameters())


@pytest.mark.slow  # a short training run
def test_budget_head_learns_from_budget_constraint(tiny_model):
    """The batch-mean constraint moves the mean budget towards the target."""
    model = tiny_model.train()
    model.allocator.set_budget(target_tokens=100)
    batch = make_batch(model, n=4)
    opt = torch.optim.Adam(model.allocator.head.parameters(), lr=1e-2)
    start = model(**batch).allocation.budget_soft.mean().item()
    for _ in range(30):
        out = model(**batch)
        opt.zero_grad()
        out.budget_loss.backward()
        opt.step()
    end = model(**batch).allocation.budget_soft.mean().item()
    assert abs(end - 100) < abs(start - 100) / 2, (start, end)


@pytest.mark.parametrize("kind", ["random", "zeros", "huge", "constant", "tiny"])
def test_budgets_within_bounds(kind):
    torch.manual_seed(0)
    model = ARRCOCModel(min_tokens=64, max_tokens=400)
    batch = make_batch(model, n=4)
    pix = batch["pixel_values"]
    batch["pixel_values"] = {"random": torch.randn_like(pix) * 3, "zeros": torch.zeros_like(pix),
                             "huge": torch.randn_like(pix) * 1e4, "constant": torch.full_like(pix, 5.0),
                             "tiny": torch.randn_like(pix) * 1e-6}[kind]
    for mode in (model.train, model.eval):
        mode()
        alloc = model(**batch).allocation
        assert ((alloc.budget >= 64) & (alloc.budget <= 400)).all(), alloc.budget
        assert torch.equal(alloc.keep_mask.sum(-1), alloc.budget)
        assert torch.isfinite(alloc.relevance).all()


def test_extreme_budget_head_outputs_are_clamped(tiny_model):
    model = tiny_model
    batch = make_batch(model, n=2)
    for bias, expected in ((1e4, 400), (-1e4, 64)):
        with torch.no_grad():
            model.allocator.head[-1].bias.fill_(bias)
        assert model(**batch).allocation.budget.tolist() == [expected, expected]


def test_budget_override_and_bounds_setter(tiny_model):
    batch = make_batch(tiny_model, n=2)
    assert tiny_model(**batch, budget=10).allocation.budget.tolist() == [10, 10]
    assert tiny_model(**batch, budget=torch.tensor([5, 500])).allocation.keep_mask.sum(-1).tolist() == [5, 500]
    tiny_model.allocator.set_budget(min_tokens=100, max_tokens=576, target_tokens=576)
    assert tiny_model.allocator.bounds.tolist() == [100, 576]
    with pytest.raises(ValueError, match="max_tokens=577 exceeds"):
        tiny_model.allocator.set_budget(max_tokens=577)
    with pytest.raises(ValueError, match="budget override"):
        tiny_model(**batch, budget=0)


def test_inference_is_deterministic(shared_tiny_model):
    batch = make_batch(shared_tiny_model, n=3)
    with torch.no_grad():
        a = shared_tiny_model(**batch)
        b = shared_tiny_model(**batch)
    assert torch.equal(a.allocation.keep_mask, b.allocation.keep_mask)
    assert torch.equal(a.allocation.budget, b.allocation.budget)
    assert torch.equal(a.logits, b.logits)


def test_selection_noise_only_in_training():
    torch.manual_seed(0)
    model = ARRCOCModel(selection_noise=5.0)
    batch = make_batch(model, n=2)
    model.train()
    kept = [model(**batch, budget=100).allocation.keep_mask for _ in range(2)]
    assert not torch.equal(kept[0], kept[1])
    model.eval()
    kept = [model(**batch, budget=100).allocation.keep_mask for _ in range(2)]
    assert torch.equal(kept[0], kept[1])


def test_full_token_mode_keeps_all_tokens_in_raster_order(shared_tiny_model):
    model = shared_tiny_model
    batch = make_batch(model, n=2)
    with torch.no_grad():
        out = model(**batch, full_tokens=True)
        patches = model.encoder(batch["pixel_values"]).flat()
        expected = model.projector(patches + model.positions())  # [B, 576, E] raster order
    alloc = out.allocation
    assert alloc.budget.tolist() == [576, 576] and alloc.keep_mask.all() and alloc.scorer_maps is None
    assert alloc.visual_tokens.tolist() == [576, 576]  # nothing dropped, nothing summarised
    for i in range(2):
        seq = out.packed.embeds[i][out.packed.visual_mask[i]]
        assert torch.allclose(seq, expected[i], atol=1e-5)
        assert torch.equal(alloc.records()[i].kept_indices, torch.arange(576))
    assert float(out.budget_loss) == 0.0


def test_adaptive_kept_tokens_are_raster_ordered_and_gated_to_one(shared_tiny_model):
    model = shared_tiny_model
    batch = make_batch(model, n=2)
    with torch.no_grad():
        out = model(**batch)
        patches = model.encoder(batch["pixel_values"]).flat()
        expected = model.projector(patches + model.positions())
    for i, rec in enumerate(out.allocation.records()):
        seq = out.packed.embeds[i][out.packed.visual_mask[i]]
        assert seq.shape[0] == rec.budget + 1  # kept + one summary token
        assert torch.allclose(seq[: rec.budget], expected[i, rec.kept_indices], atol=1e-5)


def test_precomputed_features_match_pixels(shared_tiny_model):
    model = shared_tiny_model
    batch = make_batch(model, n=2)
    with torch.no_grad():
        enc = model.encoder(batch["pixel_values"])
        from_pixels = model(**batch)
        cached = {k: v for k, v in batch.items() if k != "pixel_values"}
        from_cache = model(**cached, patch_features=enc.flat(), cls_features=enc.cls)
    assert torch.equal(from_pixels.allocation.keep_mask, from_cache.allocation.keep_mask)
    assert torch.allclose(from_pixels.logits, from_cache.logits, atol=1e-5)
    with pytest.raises(ValueError, match=r"expected \[B, 576, 64\]"):
        model(**cached, patch_features=torch.zeros(2, 100, 64))


def test_fixed_budget_adds_no_budget_loss(tiny_model):
    out = tiny_model(**make_batch(tiny_model, n=2), budget=576)
    assert float(out.budget_loss) == 0.0 and torch.equal(out.loss, out.lm_loss)


def test_gate_is_exactly_one_on_kept_tokens():
    torch.manual_seed(0)
    alloc = TokenAllocator(576, 32).train()
    sel = alloc(torch.randn(3, 576, requires_grad=True), torch.randn(3, 32))
    assert torch.equal(sel.gate[sel.keep_mask], torch.ones(int(sel.keep_mask.sum())))
    assert torch.equal(sel.gate[~sel.keep_mask], torch.zeros(int((~sel.keep_mask).sum())))
    assert sel.gate.requires_grad


def test_equal_token_baselines(shared_tiny_model):
    model = shared_tiny_model
    batch = make_batch(model, n=3)
    budgets = torch.tensor([64, 100, 200])
    with torch.no_grad():
        learned = model(**batch, budget=budgets).allocation
        rand = [model(**batch, budget=budgets, selection="random").allocation for _ in range(2)]
        grid = model(**batch, budget=budgets, selection="grid").allocation
    for alloc in (learned, rand[0], grid):
        assert alloc.budget.tolist() == [64, 100, 200]
        assert alloc.keep_mask.sum(-1).tolist() == [64, 100, 200]
    assert torch.equal(rand[0].keep_mask, rand[1].keep_mask)  # seeded: the same every call
    assert not torch.equal(rand[0].keep_mask, learned.keep_mask)
    kept = grid.records()[0].kept_indices
    assert kept[0] == 0 and kept[-1] == 575 and (kept.diff() >= 8).all()  # evenly spread over the raster
    with pytest.raises(ValueError, match="selection='best'"):
        model(**batch, selection="best")


def test_rank_scores_of_your_own_choose_the_kept_tokens(shared_tiny_model):
    model = shared_tiny_model
    batch = make_batch(model, n=2)
    scores = torch.zeros(2, 576)
    scores[0, :70] = 1.0  # sample 0: the first 70 patches in raster order
    scores[1, -70:] = 1.0  # sample 1: the last 70
    with torch.no_grad():
        alloc = model(**batch, budget=70, selection=scores).allocation
    assert alloc.keep_mask[0, :70].all() and alloc.keep_mask[1, -70:].all() and alloc.budget.tolist() == [70, 70]
    with pytest.raises(ValueError, match=r"selection scores have shape \(2, 10\)"):
        model(**batch, budget=70, selection=torch.zeros(2, 10))


def test_relevance_without_the_question_and_the_budget_logits(shared_tiny_model):
    model = shared_tiny_model
    batch = make_batch(model, n=3)
    with torch.no_grad():
        seen = model.encoder(batch["pixel_values"])
        patches, cls = seen.flat(), seen.cls
        own = model.relevance(patches, cls, batch["pixel_values"], batch["question_ids"], batch["question_mask"])
        blind = model.relevance(patches, cls, batch["pixel_values"])
        out = model(**batch)
        logits = model.allocator.budget_logits(own.relevance, own.context)
    assert own.maps.shape == (3, 3, 576) and own.weights.shape == (3, 3) and own.relevance.shape == (3, 576)
    assert torch.equal(own.relevance, out.allocation.relevance)  # what forward ranks by
    assert not torch.allclose(own.context, blind.context)  # the question gist is gone
    lo, hi = model.allocator.min_tokens, model.allocator.max_tokens
    expected = (lo + torch.sigmoid(logits) * (hi - lo)).round().long()
    assert torch.equal(expected, out.allocation.budget)


def test_answer_from_visual_tokens_is_what_generate_does(shared_tiny_model):
    model = shared_tiny_model
    batch = make_batch(model, n=3)
    with torch.no_grad():
        gen = model.generate(**batch, budget=64)
        seen = model.encoder(batch["pixel_values"])
        visual, visual_mask, _, _ = model._see(batch["pixel_values"], seen.flat(), seen.cls, batch["question_ids"],
                                               batch["question_mask"], 64, False)
        before_answer = (batch["labels"] != IGNORE_INDEX).long().cumsum(-1) == 0
        tokens, texts = model.answer(batch["input_ids"], batch["attention_mask"] * before_answer.long(), visual,
                                     visual_mask)
    assert torch.equal(tokens, gen.tokens) and texts == gen.texts
