import pytest
import torch

from arrcoc.language_model import LanguageModel


def test_tiny_preset():
    lm = LanguageModel()
    assert lm.hidden_size == 128 and lm.tokenizer.convert_ids_to_tokens(lm.image_token_id) == "<image>"
    assert not lm.model.config.to_dict().get("trust_remote_code", False)


def test_from_pretrained_directory_offline(tmp_path):
    """A saved model directory loads through the real from_pretrained path, with a dtype."""
    torch.manual_seed(0)
    src = LanguageModel()
    src.model.save_pretrained(tmp_path)
    src.tokenizer.save_pretrained(tmp_path)
    lm = LanguageModel(str(tmp_path), dtype="bfloat16")
    assert lm.dtype == torch.bfloat16 and lm.image_token_id == src.image_token_id
    ids = torch.tensor([[1, 50, 60]])
    h = lm.hidden_states(lm.embed(ids), torch.ones_like(ids), torch.arange(3)[None])
    ref = src.hidden_states(src.embed(ids), torch.ones_like(ids), torch.arange(3)[None])
    assert torch.allclose(h.float(), ref, atol=0.1, rtol=0.05)


def test_placeholder_outside_embedding_table_embeds_as_padding():
    lm = LanguageModel()
    big = lm.model.get_input_embeddings().num_embeddings + 3
    assert torch.equal(lm.embed(torch.tensor([[big]])), lm.embed(torch.tensor([[lm.tokenizer.pad_token_id]])))


def test_bad_dtype():
    with pytest.raises(ValueError, match=r"llm.dtype='float8' is not supported"):
        LanguageModel(dtype="float8")


def _hf_reference(lm: LanguageModel, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mask, pos = torch.ones_like(ids), torch.arange(ids.shape[1])[None].expand_as(ids)
    ours = lm.logits(lm.hidden_states(lm.embed(ids), mask, pos))
    ref = lm.model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    return ours, ref


def test_decoder_plus_head_equals_the_hf_forward():
    """Our split path (decoder hidden states, then the head where needed) gives HF's logits."""
    torch.manual_seed(0)
    lm = LanguageModel().eval()
    ours, ref = _hf_reference(lm, torch.randint(10, 700, (2, 9)))
    assert torch.allclose(ours, ref, atol=1e-5)


def test_final_logit_softcapping_is_applied(tmp_path):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from arrcoc.processing.tiny_tokenizer import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    cfg = Gemma2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=16, final_logit_softcapping=0.5,
                       pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    Gemma2ForCausalLM(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    lm = LanguageModel(str(tmp_path), attn_implementation="eager").eval()
    ours, ref = _hf_reference(lm, torch.randint(10, 700, (1, 6)))
    assert ref.abs().max() <= 0.5 and torch.allclose(ours, ref, atol=1e-5)
