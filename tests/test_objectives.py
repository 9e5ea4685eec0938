"""What the allocation learns from besides the LM loss: the saliency target, the load-balancing term, the
sufficiency labels of the budget head, budget jitter, and the phase that combines them."""

import math

import pytest
import torch

from arrcoc.allocator import TokenAllocator
from arrcoc.balancer import OpponentBalancer, balance_loss
from arrcoc.data.collate import model_inputs
from arrcoc.model import ARRCOCModel
from arrcoc.phases import FinetunePhase, RelevancePhase
from arrcoc.phases.objectives import (
    SufficiencyLabels,
    full_token_teacher,
    need_loss,
    patch_saliency,
    relevance_loss,
)
from arrcoc.scorers import ParticipatoryScorer, PerspectivalScorer, ScorerInputs
from conftest import make_batch


def test_saliency_puts_the_mass_where_the_loss_depends_on_the_patch():
    feats = torch.randn(2, 10, 4)
    weight = torch.zeros(10)
    weight[[3, 7]] = 1.0
    x = feats.clone().requires_grad_(True)
    loss = (weight[None, :, None] * x).pow(2).sum()  # depends on patches 3 and 7 only
    (grad,) = torch.autograd.grad(loss, x)
    s = patch_saliency(grad, feats)
    torch.testing.assert_close(s.sum(-1), torch.ones(2))
    assert float(s[:, [3, 7]].sum()) == pytest.approx(2.0)
    torch.testing.assert_close(patch_saliency(torch.zeros(1, 5, 3), torch.randn(1, 5, 3)), torch.full((1, 5), 0.2))


def test_the_teacher_reuses_the_features_and_gives_a_distribution(shared_tiny_model):
    model = shared_tiny_model
    inputs = model_inputs(make_batch(model, n=3))
    with torch.no_grad():
        out = model(**inputs, budget=64, return_logits=False)
        full = model(**inputs, full_tokens=True, return_logits=False)
    teacher = full_token_teacher(model, inputs, out.patch_features, out.cls_features, saliency=True)
    torch.testing.assert_close(teacher.answer_logits, full.answer_logits)
    torch.testing.assert_close(teacher.sample_loss, full.sample_loss())
    assert teacher.saliency.shape == (3, model.encoder.num_patches)
    torch.testing.assert_close(teacher.saliency.sum(-1), torch.ones(3))
    assert all(p.grad is None for p in model.parameters())  # only the features got a gradient


def test_a_question_using_scorer_learns_to_rank_the_named_object_first_and_a_blind_one_cannot():
    """Two objects per image, of two kinds; the question names one of them (token 0 or 1). Trained on the relevance
    loss against the named object's patches, the participatory scorer ranks that object first; the perspectival
    scorer, which never reads the question, cannot do better than picking one object for both questions."""
    n, d, e = 36, 8, 8
    kinds = torch.randn(2, d)
    vocab = torch.randn(4, e)  # tokens 0, 1 name the kinds; 2, 3 are function words

    def batch(b, gen):
        patches = 0.3 * torch.randn(b, n, d, generator=gen)
        named = torch.zeros(b, n)
        which = torch.randint(0, 2, (b,), generator=gen)
        for i in range(b):
            spots = torch.randperm(n, generator=gen)[:6]
            patches[i, spots[:3]] += kinds[0]
            patches[i, spots[3:]] += kinds[1]
            named[i, spots[:3] if which[i] == 0 else spots[3:]] = 1.0
        question = torch.stack([vocab[2].expand(b, e), vocab[which], vocab[3].expand(b, e)], 1)  # [B, 3, E]
        return ScorerInputs(patches=patches, grid=(6, 6), question=question,
                            question_mask=torch.ones(b, 3, dtype=torch.bool)), named

    def named_first(scorer) -> float:
        inputs, named = batch(200, torch.Generator().manual_seed(1))
        with torch.no_grad():
            top = scorer(inputs).topk(3, dim=-1).indices
        return float(named.gather(1, top).mean())  # share of the top 3 that are the named object's

    results = {}
    for cls in (ParticipatoryScorer, PerspectivalScorer):
        torch.manual_seed(0)
        scorer = cls(d, e, rank=16)
        opt = torch.optim.Adam(scorer.parameters(), lr=1e-2)
        gen = torch.Generator().manual_seed(0)
        for _ in range(150):
            inputs, named = batch(32, gen)
            loss = relevance_loss(scorer(inputs), named / named.sum(-1, keepdim=True), temperature=0.25)
            opt.zero_grad()
            loss.backward()
            opt.step()
        results[cls.__name__] = named_first(scorer)
    assert results["ParticipatoryScorer"] > 0.9, results
    assert results["PerspectivalScorer"] < 0.7, results


def test_balance_loss_is_zero_for_even_use_and_keeps_the_balancer_from_collapsing():
    assert float(balance_loss(torch.full((4, 3), 1 / 3))) == pytest.approx(0.0, abs=1e-6)
    assert float(balance_loss(torch.tensor([[1.0, 0.0, 0.0]] * 4))) == pytest.approx(2.0)
    maps = torch.randn(64, 3, 20)
    maps = (maps - maps.mean(-1, keepdim=True)) / maps.std(-1, keepdim=True)
    target = torch.zeros(64, 20).scatter_(1, maps[:, 0].topk(3, -1).indices, 1 / 3)  # scorer 0's top patches

    def train(weight: float) -> torch.Tensor:
        torch.manual_seed(0)
        balancer = OpponentBalancer(3, context_dim=5)
        opt = torch.optim.Adam(balancer.parameters(), lr=5e-2)
        context = torch.randn(64, 5)
        for _ in range(200):
            relevance, w = balancer(maps, context)
            loss = relevance_loss(relevance, target, 0.25) + weight * balance_loss(w)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return balancer(maps, context)[1].mean(0).detach()

    assert float(train(0.0).min()) < 0.06  # all but collapses onto scorer 0
    assert float(train(1.0).min()) > 0.15  # every scorer stays in play


def test_sufficiency_labels_interpolate_and_meet_the_target_mean():
    need = SufficiencyLabels(ks=(64, 128, 256))
    deficits = torch.tensor([[0.0, 0.0, 0.0],  # any budget suffices
                             [1.0, 0.5, 0.0],  # needs 256 at tau 0
                             [2.0, 2.0, 2.0],  # only all tokens
                             [1.0, 0.0, 0.0]])
    k = need.budgets(deficits, n=576, tau=0.0)
    assert k.tolist() == pytest.approx([64, 256, 576, 128])
    mid = need.budgets(torch.tensor([[1.0, 0.5, 0.0]]), n=576, tau=0.25)  # halfway between 128 and 256 in log k
    assert float(mid) == pytest.approx(math.sqrt(128 * 256), rel=1e-4)
    assert torch.isnan(need.budgets(torch.tensor([[float("nan")] * 3]), 576, 0.0)).all()
    gen = torch.Generator().manual_seed(0)
    deficits = torch.rand(64, 3, generator=gen).sort(-1, descending=True).values * torch.rand(64, 1, generator=gen)
    labels = need.labels(deficits, 576, target=150.0, lo=64, hi=400)
    assert float(labels.mean()) == pytest.approx(150.0, abs=3.0)
    assert float(labels.max() - labels.min()) > 100  # need differs per sample, and so do the labels
    assert need.state_dict()["tau"] is not None


def test_the_budget_head_learns_a_need_that_depends_on_the_question():
    torch.manual_seed(0)
    alloc = TokenAllocator(576, context_dim=6, min_tokens=64, max_tokens=400, target_tokens=198)
    opt = torch.optim.Adam(alloc.parameters(), lr=1e-2)
    for _ in range(150):
        context = torch.randn(32, 6)
        labels = torch.where(context[:, 0] > 0, 350.0, 90.0)  # a constructed need signal in the question gist
        sel = alloc(torch.randn(32, 576), context)
        loss = need_loss(sel.budget_soft, labels, 64, 400)
        opt.zero_grad()
        loss.backward()
        opt.step()
    alloc.eval()
    context = torch.randn(200, 6)
    budgets = alloc(torch.randn(200, 576), context).budget.float()
    assert float(budgets[context[:, 0] > 0].mean() - budgets[context[:, 0] <= 0].mean()) > 150


def test_budget_jitter_draws_one_budget_per_training_batch():
    torch.manual_seed(0)
    alloc = TokenAllocator(576, context_dim=4, budget_jitter=1.0)
    relevance, context = torch.randn(16, 576), torch.randn(16, 4)
    alloc.train()
    draws = [alloc(relevance, context).budget for _ in range(30)]
    assert all(len(set(d.tolist())) == 1 for d in draws)  # one k per batch: no padding to the largest draw
    firsts = [int(d[0]) for d in draws]
    assert min(firsts) >= 64 and max(firsts) <= 400 and max(firsts) - min(firsts) > 200  # uniform over [64, 400]
    alloc.eval()
    head = alloc(relevance, context).budget
    assert int(head.max() - head.min()) < 40 and len(set(head.tolist())) > 1  # the head's own budgets
    with pytest.raises(ValueError, match="budget_jitter"):
        ARRCOCModel(budget_jitter=1.5)


def test_the_relevance_phase_trains_on_every_term():
    torch.manual_seed(0)
    phase = RelevancePhase(ARRCOCModel())
    model = phase.model
    inputs = model_inputs(make_batch(model, n=4))
    out = model(**inputs, return_logits=False)
    losses = phase.compute_losses(inputs, out)
    for name in ("distill", "relevance", "balance", "need", "need_tau", "weight_participatory"):
        assert torch.isfinite(losses[name]), name
    losses["loss"].backward()
    trained = {name: any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in module.parameters())
               for name, module in model.components().items()}
    assert trained["scorers"] and trained["balancer"] and trained["allocator"]
    assert not trained["llm"] and not trained["encoder"] and not trained["projector"]


def test_a_full_token_finetune_is_the_reference_and_trains_no_allocation():
    phase = FinetunePhase(ARRCOCModel(), full_tokens=True)
    assert phase.model.full_tokens
    assert set(phase.trainable_components()) == {"positions", "projector", "llm"}
    assert not any(p.requires_grad for p in phase.model.scorers.parameters())
    inputs = model_inputs(make_batch(phase.model, n=2))
    out = phase.model(**inputs, return_logits=False)
    assert set(phase.compute_losses(inputs, out)) == {"loss", "lm_loss"}
    assert int(out.allocation.visual_tokens.min()) == phase.model.encoder.num_patches


def test_the_sufficiency_tolerance_resumes_from_a_checkpoint():
    model = ARRCOCModel()
    phase = RelevancePhase(model)
    phase.need.labels(torch.tensor([[1.0, 0.5, 0.2], [0.0, 0.0, 0.0]]), 576, target=198.0, lo=64, hi=400)
    checkpoint: dict = {}
    phase.on_save_checkpoint(checkpoint)
    resumed = RelevancePhase(model)
    assert resumed.need.tau is None
    resumed.on_load_checkpoint(checkpoint)
    assert resumed.need.tau == phase.need.tau is not None


def test_alignment_trains_part_of_its_batches_on_random_subsets():
    from arrcoc.phases import AlignPhase

    torch.manual_seed(0)
    model = ARRCOCModel()
    inputs = model_inputs(make_batch(model, n=4))
    tokens = set()
    phase = AlignPhase(model, subset_share=1.0)
    for _ in range(5):
        out = model(**inputs, **phase.forward_kwargs(inputs), return_logits=False)
        budgets = out.allocation.budget.tolist()
        assert len(set(budgets)) == 1 and 64 <= budgets[0] <= 400  # one k for the batch, in the allocator's bounds
        assert set(phase.compute_losses(inputs, out)) == {"loss", "lm_loss"}
        tokens.add(budgets[0])
    assert len(tokens) > 1
    assert AlignPhase(model, subset_share=0.0).forward_kwargs(inputs) == {}  # all patches
    with pytest.raises(ValueError, match="subset_share"):
        AlignPhase(model, subset_share=2.0)
