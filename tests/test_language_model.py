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
