"""Mixed and reduced precision: the model runs when cast to bf16, on bf16 cached features, and the
budget head keeps full precision under autocast."""

import torch

from arrcoc.allocator import TokenAllocator
from arrcoc.language_model import LanguageModel
from arrcoc.model import ARRCOCModel
from conftest import make_batch


def test_whole_model_in_bf16(tiny_model):
    model = tiny_model.to(torch.bfloat16).train()
    batch = make_batch(model, n=3)  # fp32 pixels: the encoder casts them
    out = model(**batch)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert ((out.allocation.budget >= 64) & (out.allocation.budget <= 400)).all()
    out.lm_loss.backward()
    assert all(p.grad is not None and torch.any(p.grad != 0) for p in model.allocator.head.parameters())


def test_bf16_cached_features_in_fp32_model(shared_tiny_model):
    model = shared_tiny_model
    batch = make_batch(model, n=2)
    with torch.no_grad():
        enc = model.encoder(batch.pop("pixel_values"))
        out = model(**batch, patch_features=enc.flat().bfloat16(), cls_features=enc.cls.bfloat16())
    assert torch.isfinite(out.loss)


def test_budget_head_is_full_precision_under_autocast():
    torch.manual_seed(0)
    alloc = TokenAllocator(576, 32).eval()
    relevance, context = torch.randn(16, 576), torch.randn(16, 32)
    ref = alloc(relevance, context)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = alloc(relevance, context)
    assert amp.budget_soft.dtype == torch.float32
    assert torch.allclose(amp.budget_soft, ref.budget_soft, atol=1e-3)
    assert torch.equal(amp.budget, ref.budget)


def test_tiny_lm_honours_dtype():
    assert LanguageModel(dtype="bfloat16").dtype == torch.bfloat16


def test_whole_model_in_bf16_tiny_lm():
    torch.manual_seed(0)
    model = ARRCOCModel(llm=LanguageModel(dtype="bfloat16"))
    out = model(**make_batch(model, n=2))
    assert torch.isfinite(out.loss)
