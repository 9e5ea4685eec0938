"""Language model: any transformers causal LM with its tokenizer, plus the embedded tiny preset.

The LLM is the last stage of the data flow: it receives text embeddings with the projected visual
tokens spliced in (see :mod:`arrcoc.packing`) and predicts the answer. Real presets load by name or
path through ``from_pretrained``; ``arrcoc-tiny-lm`` is a small Llama-style decoder with a locally built
tokenizer, so nothing is downloaded: randomly initialised from its config, or (``pretrained: text``)
loaded through ``from_pretrained`` from the weights ``arrcoc pretrain-lm`` made and the package ships.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerBase

from arrcoc.packing import GROUP_OVERHEAD_TOKENS, check_packing, cu_seqlens, length_groups, right_padded_lengths
from arrcoc.presets import TEXT_TAG, TINY_LM, text_checkpoint
from arrcoc.processing import IMAGE_TOKEN, build_tokenizer

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def _tiny_lm(vocab_size: int, pad_id: int, bos_id: int, eos_id: int, attn_implementation: str | None) -> nn.Module:
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        pad_token_id=pad_id,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
    )
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation or "sdpa")


def _tiny_checkpoint(pretrained: str) -> str:
    """``text`` -> the shipped directory; anything else must be a directory holding a ``config.json``."""
    if pretrained == TEXT_TAG:
        return str(text_checkpoint())
    path = Path(pretrained).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"llm.pretrained={pretrained!r} is neither {TEXT_TAG!r} (the shipped weights) nor a "
                                "checkpoint directory with a config.json (what `arrcoc pretrain-lm --out DIR` writes)")
    return str(path)


class LanguageModel(nn.Module):
    """A causal LM and its tokenizer, with an ``<image>`` placeholder token.

    Args:
        name: ``arrcoc-tiny-lm`` or any transformers causal LM name or local path
            (e.g. ``Qwen/Qwen2.5-1.5B-Instruct``).
        dtype: weight dtype (``bfloat16``, ``float16``, ``float32``); ``None`` keeps the
            checkpoint's (float32 for the tiny preset).
        trust_remote_code: passed to transformers; off unless a config turns it on.
        attn_implementation: e.g. ``sdpa``, ``flash_attention_2``; ``None`` lets transformers choose.
        revision: a model revision (branch, tag or commit) for hub names.
        pretrained: tiny preset only: ``text`` for the shipped weights (pretrained by
            ``arrcoc pretrain-lm`` on the sample task's questions about scenes written in words), or a
            checkpoint directory that command wrote; ``None`` starts from random init. Other names are
            pretrained already: they must leave it ``None``.
        packing: how :meth:`packed_hidden_states` runs a right-padded batch of very different lengths:
            ``pad`` (the whole padded batch), ``group`` (sub-batches of similar length), ``varlen`` (one
            flattened row, per-sample attention), ``auto`` (``varlen`` under flash attention on CUDA, else
            ``group``). All give the padded result on real tokens; see ``docs/packing.md``.
    """

    def __init__(
        self,
        name: str = TINY_LM,
        dtype: str | None = None,
        trust_remote_code: bool = False,
        attn_implementation: str | None = None,
        revision: str | None = None,
        pretrained: str | None = None,
        packing: str = "auto",
    ) -> None:
        super().__init__()
        self.packing = check_packing(packing)
        self.group_overhead: int = GROUP_OVERHEAD_TOKENS  # padded tokens one more decoder call is worth
        if dtype is not None and dtype not in _DTYPES:
            raise ValueError(f"llm.dtype={dtype!r} is not supported; valid: {sorted(_DTYPES)} or null")
        if pretrained is not None and name != TINY_LM:
            raise ValueError(f"llm.pretrained={pretrained!r} applies to {TINY_LM} only; {name!r} loads its own "
                             "weights: leave pretrained null (or point name at a local checkpoint)")
        self.name, self.pretrained = name, pretrained
        tokenizer = build_tokenizer(name, trust_remote_code=trust_remote_code, revision=revision)
        if name == TINY_LM and pretrained is None:
            model = _tiny_lm(len(tokenizer), tokenizer.pad_token_id, tokenizer.bos_token_id,
                             tokenizer.eos_token_id, attn_implementation)
            if dtype is not None:
                model.to(_DTYPES[dtype])
        elif name == TINY_LM:
            model = AutoModelForCausalLM.from_pretrained(
                _tiny_checkpoint(pretrained), dtype=_DTYPES[dtype] if dtype else torch.float32,
                attn_implementation=attn_implementation or "sdpa")
            if model.get_input_embeddings().num_embeddings != len(tokenizer):
                raise ValueError(f"llm.pretrained={pretrained!r} has a vocabulary of "
                                 f"{model.get_input_embeddings().num_embeddings} tokens; the tiny tokenizer has "
                                 f"{len(tokenizer)}: remake it with `arrcoc pretrain-lm`")
        else:
            model = AutoModelForCausalLM.from_pretrained(
                name, dtype=_DTYPES[dtype] if dtype else "auto", attn_implementation=attn_implementation,
                trust_remote_code=trust_remote_code, revision=revision)
        self.model: nn.Module = model
        self.tokenizer: PreTrainedTokenizerBase = tokenizer
        self.image_token_id: int = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.hidden_size: int = int(model.config.hidden_size)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    def embed(self, ids: Tensor) -> Tensor:
        """Token ids [B, T] -> embeddings [B, T, E]; ids outside the embedding table (the image
        placeholder of a pretrained tokenizer) embed as padding."""
        table = self.model.get_input_embeddings()
        ids = ids.masked_fill(ids >= table.num_embeddings, self.tokenizer.pad_token_id)
        return table(ids)

    def hidden_states(self, inputs_embeds: Tensor, attention_mask: Tensor, position_ids: Tensor) -> Tensor:
        """Final hidden states [B, L, E] of the decoder (no LM head: logits are taken where needed)."""
        out = self.model.get_decoder()(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
            use_cache=False,
        )
        return out.last_hidden_state

    def resolved_packing(self, device: torch.device) -> str:
        """The packing mode actually used on ``device``: ``auto`` becomes ``varlen`` where flash attention's
        varlen kernels run (CUDA, ``flash_attention_*``), else ``group`` (sdpa/eager would turn varlen into a
        dense block mask over the whole flattened batch, more work than the padding it removes)."""
        if self.packing != "auto":
            return self.packing
        impl = str(getattr(self.model.config, "_attn_implementation", "") or "")
        return "varlen" if device.type == "cuda" and impl.startswith("flash_attention") else "group"

    def packed_hidden_states(self, inputs_embeds: Tensor, attention_mask: Tensor, position_ids: Tensor) -> Tensor:
        """:meth:`hidden_states` of a right-padded batch [B, L, E] without computing (most of) its padding.

        Follows ``packing`` (see :meth:`resolved_packing`); returns [B, L, E] in the padded layout, equal to
        :meth:`hidden_states` on real tokens (up to float rounding) and zero on padding under ``group`` and
        ``varlen`` (nothing downstream may read padded positions)."""
        mode = self.resolved_packing(inputs_embeds.device)
        if mode == "pad" or inputs_embeds.shape[0] == 1:
            return self.hidden_states(inputs_embeds, attention_mask, position_ids)
        lengths = right_padded_lengths(attention_mask)  # [B]
        if mode == "varlen":
            return self._varlen_hidden_states(inputs_embeds, attention_mask, position_ids, lengths)
        return self._grouped_hidden_states(inputs_embeds, attention_mask, position_ids, lengths)

    def _grouped_hidden_states(self, embeds: Tensor, mask: Tensor, positions: Tensor, lengths: Tensor) -> Tensor:
        """Run groups of similar length (see :func:`length_groups`), each trimmed to its longest row, and
        put the rows back in batch order, padded to L with zeros."""
        b, length, _ = embeds.shape
        groups = length_groups(lengths.tolist(), self.group_overhead)
        if len(groups) == 1:
            return self.hidden_states(embeds, mask, positions)
        parts, order = [], []
        for rows in groups:
            idx = torch.tensor(rows, device=embeds.device)
            width = int(lengths[idx].max())
            hidden = self.hidden_states(embeds[idx, :width], mask[idx, :width], positions[idx, :width])  # [G, l, E]
            parts.append(F.pad(hidden, (0, 0, 0, length - width)))  # [G, L, E]
            order.extend(rows)
        inverse = torch.empty(b, dtype=torch.long, device=embeds.device)
        inverse[torch.tensor(order, device=embeds.device)] = torch.arange(b, device=embeds.device)
        hidden = torch.cat(parts) * mask[torch.tensor(order, device=embeds.device), :, None].to(embeds.dtype)
        return hidden[inverse]  # [B, L, E] back in batch order, zero on padding

    def _varlen_hidden_states(self, embeds: Tensor, mask: Tensor, positions: Tensor, lengths: Tensor) -> Tensor:
        """Run all real tokens as one row [1, S] (S = sum of lengths) with ``attention_mask=None`` and position
        ids restarting at 0 per sample: transformers reads the restarts as packed sequences and keeps attention
        within each sample (block-causal mask on sdpa/eager, varlen kernels on flash attention, which also get
        the cumulative lengths directly so no layer has to infer them)."""
        real = mask.bool()  # [B, L]
        flat = embeds[real][None]  # [1, S, E]
        flat_pos = positions[real][None]  # [1, S]
        kwargs = {}
        if str(getattr(self.model.config, "_attn_implementation", "")).startswith("flash_attention"):
            cu = cu_seqlens(lengths)  # [B + 1]
            longest = int(lengths.max())
            kwargs = {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}
        out = self.model.get_decoder()(inputs_embeds=flat, attention_mask=None, position_ids=flat_pos,
                                       use_cache=False, **kwargs).last_hidden_state  # [1, S, E]
        rows, cols = real.nonzero(as_tuple=True)  # [S] each, row-major like the flattening
        return out.new_zeros(embeds.shape).index_put((rows, cols), out[0])  # [B, L, E]

    @torch.no_grad()
    def greedy(self, embeds: Tensor, attention_mask: Tensor, position_ids: Tensor, max_new_tokens: int) -> Tensor:
        """Greedy decoding from left-padded input embeddings [B, L, E] with a KV cache -> ids [B, T].

        Finished sequences continue with padding after their end-of-sequence token."""
        decoder = self.model.get_decoder()
        cache_kw = "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        out = decoder(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids, use_cache=True)
        done = torch.zeros(embeds.shape[0], dtype=torch.bool, device=embeds.device)
        next_pos = position_ids[:, -1:] + 1  # [B, 1] left padding: the last column is real
        steps = []
        for _ in range(max_new_tokens):
            token = self.logits(out.last_hidden_state[:, -1]).argmax(-1)  # [B]
            token = torch.where(done, torch.full_like(token, pad), token)
            steps.append(token)
            done |= token == eos
            if bool(done.all()):
                break
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(attention_mask.shape[0], 1)], 1)
            cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
            out = decoder(inputs_embeds=self.embed(token[:, None]), attention_mask=attention_mask,
                          position_ids=next_pos, use_cache=True, **{cache_kw: cache})
            next_pos = next_pos + 1
        return torch.stack(steps, 1)  # [B, T]

    def logits(self, hidden: Tensor) -> Tensor:
        """Hidden states [..., E] -> vocabulary logits [..., V], with the model's own final-logit
        transforms (Cohere's ``logit_scale``, Gemma-2's ``final_logit_softcapping``)."""
        logits = self.model.get_output_embeddings()(hidden)
        scale = getattr(self.model, "logit_scale", None)
        if isinstance(scale, (int, float)):
            logits = logits * scale
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits
