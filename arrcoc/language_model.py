"""Language model: any transformers causal LM with its tokenizer, plus the embedded tiny preset.

The LLM is the last stage of the data flow: it receives text embeddings with the projected visual
tokens spliced in (see :mod:`arrcoc.packing`) and predicts the answer. Real presets load by name or
path through ``from_pretrained``; ``arrcoc-tiny-lm`` is a small Llama-style decoder with a locally built
tokenizer, so nothing is downloaded: randomly initialised from its config, or (``pretrained: text``)
loaded through ``from_pretrained`` from the weights ``arrcoc pretrain-lm`` made and the package ships.
With ``lora`` the causal LM is wrapped in peft LoRA adapters (see :class:`LoraSpec` and the LoRA section
at the end of this module): only they train.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerBase

from arrcoc.packing import GROUP_OVERHEAD_TOKENS, check_packing, cu_seqlens, length_groups, right_padded_lengths
from arrcoc.presets import TEXT_TAG, TINY_LM, text_checkpoint
from arrcoc.processing import IMAGE_TOKEN, build_tokenizer

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


TINY_HIDDEN = 128  # the tiny preset's width


def _tiny_lm(vocab_size: int, pad_id: int, bos_id: int, eos_id: int, attn_implementation: str | None) -> nn.Module:
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=TINY_HIDDEN,
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


def _hidden_size(name: str, pretrained: str | None, trust_remote_code: bool, revision: str | None) -> int:
    """The LLM's hidden size read from its config alone (a deferred build needs it for the projector's width)."""
    if name == TINY_LM and pretrained is None:
        return TINY_HIDDEN
    source = _tiny_checkpoint(pretrained) if name == TINY_LM else name
    config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code,
                                        **({"revision": revision} if name != TINY_LM and revision else {}))
    return int(config.hidden_size)


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
        lora: LoRA adapters (:class:`LoraSpec`: ``{r, alpha, dropout, target_modules}``; needs
            ``pip install "arrcoc[peft]"``): the base weights stay frozen even where the phase trains the LLM, and
            only the adapters learn. ``None`` (default): no adapters, the whole LLM trains where the phase says so.
            Export with :meth:`save_pretrained` (adapters merged); see ``docs/scale-out.md``.
        deferred: build the transformers model later, in :meth:`build` (a phase calls it in Lightning's
            ``configure_model`` hook), not here. Under DeepSpeed ZeRO-3 that hook runs inside ``zero.Init``, so each
            weight is split across the GPUs as it is created instead of every rank holding the whole LLM first
            (``configs/deepspeed/zero3.yaml`` turns it on). Until then only the tokenizer and the config exist.
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
        lora: LoraSpec | None = None,
        deferred: bool = False,
    ) -> None:
        super().__init__()
        lora = lora_spec(lora)
        self.packing = check_packing(packing)
        self.group_overhead: int = GROUP_OVERHEAD_TOKENS  # padded tokens one more decoder call is worth
        if dtype is not None and dtype not in _DTYPES:
            raise ValueError(f"llm.dtype={dtype!r} is not supported; valid: {sorted(_DTYPES)} or null")
        if pretrained is not None and name != TINY_LM:
            raise ValueError(f"llm.pretrained={pretrained!r} applies to {TINY_LM} only; {name!r} loads its own "
                             "weights: leave pretrained null (or point name at a local checkpoint)")
        self.name, self.pretrained, self.lora = name, pretrained, lora
        self._build_args = {"dtype": dtype, "trust_remote_code": trust_remote_code,
                            "attn_implementation": attn_implementation, "revision": revision}
        self.tokenizer: PreTrainedTokenizerBase = build_tokenizer(name, trust_remote_code=trust_remote_code,
                                                                  revision=revision)
        self.image_token_id: int = self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.model: nn.Module | None = None  # the transformers model (peft-wrapped with LoRA); see build()
        if deferred:
            self.hidden_size: int = _hidden_size(name, pretrained, trust_remote_code, revision)
        else:
            self.build()

    @property
    def built(self) -> bool:
        """Whether the transformers model exists (always, unless ``deferred`` and :meth:`build` has not run)."""
        return self.model is not None

    def build(self) -> LanguageModel:
        """Create (or load) the transformers model, wrapped in LoRA adapters where ``lora`` says; nothing if it is
        built already. Under a live ``HfDeepSpeedConfig`` of ZeRO-3 (the phase's ``configure_model`` makes one),
        transformers splits each weight as it is created and loaded."""
        if self.model is not None:
            return self
        name, pretrained, tokenizer, args = self.name, self.pretrained, self.tokenizer, self._build_args
        dtype, attn = args["dtype"], args["attn_implementation"]
        if name == TINY_LM and pretrained is None:
            model = _tiny_lm(len(tokenizer), tokenizer.pad_token_id, tokenizer.bos_token_id,
                             tokenizer.eos_token_id, attn)
            if dtype is not None:
                model.to(_DTYPES[dtype])
        elif name == TINY_LM:
            model = AutoModelForCausalLM.from_pretrained(
                _tiny_checkpoint(pretrained), dtype=_DTYPES[dtype] if dtype else torch.float32,
                attn_implementation=attn or "sdpa")
            if model.config.vocab_size != len(tokenizer):
                raise ValueError(f"llm.pretrained={pretrained!r} has a vocabulary of {model.config.vocab_size} "
                                 f"tokens; the tiny tokenizer has {len(tokenizer)}: remake it with "
                                 "`arrcoc pretrain-lm`")
        else:
            model = AutoModelForCausalLM.from_pretrained(
                name, dtype=_DTYPES[dtype] if dtype else "auto", attn_implementation=attn,
                trust_remote_code=args["trust_remote_code"], revision=args["revision"])
        if self.lora is not None:
            model = wrap_lora(model, self.lora, name)
        hidden = int(model.config.hidden_size)
        if getattr(self, "hidden_size", hidden) != hidden:  # deferred: the config read at construction said otherwise
            raise ValueError(f"llm {name!r}: the built model's hidden size {hidden} differs from its config's "
                             f"{self.hidden_size}")
        self.model = model
        self.hidden_size = hidden
        return self

    def requires_grad_(self, requires_grad: bool = True) -> LanguageModel:
        """Turn training of this LLM on or off. With LoRA only the adapters follow ``requires_grad``: the base
        weights stay frozen whoever asks, so a phase that trains the LLM (and a resumed run, which freezes and
        unfreezes its components again) trains the adapters alone."""
        if self.lora is None or self.model is None:  # unbuilt (deferred): no weights yet; the phase freezes after build
            return super().requires_grad_(requires_grad)
        for name, param in self.model.named_parameters():
            param.requires_grad_(requires_grad and is_adapter_key(name))
        return self

    def merge_lora(self) -> nn.Module:
        """Merge the LoRA adapters into the base weights, in place, and return the plain transformers model.

        Afterwards this is a LanguageModel without LoRA (``lora`` is ``None``) with the same outputs, and its
        state dict has the plain names: what a config with ``lora: null`` loads through ``init_from``. Without
        LoRA it returns the model unchanged."""
        if self.lora is not None:
            self.model = merge_lora_model(self.model)
            self.lora = None
        return self.model

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the LLM and its tokenizer as a plain transformers checkpoint (``from_pretrained`` loads it, and
        so does ``LanguageModel(name=directory)``); LoRA adapters are merged in first (see :meth:`merge_lora`).
        Returns the directory."""
        out = Path(directory).expanduser()
        self.merge_lora().save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        return out

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


# ---------------------------------------------------------------------------------------------------- LoRA
# ``LanguageModel(lora=LoraSpec(...))`` wraps its transformers model with :func:`wrap_lora`: the base weights stay as
# they are (frozen) and each targeted linear layer gets two small trainable matrices. peft renames what it wraps, so
# a LoRA model's state dict differs from the plain one in two ways:
#   plain: llm.model.model.layers.0.self_attn.q_proj.weight
#   LoRA:  llm.model.base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight
#          llm.model.base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight  (an adapter)
# :func:`plain_key` undoes the renaming and :func:`to_lora_names` uses it, so ``init_from`` loads a plain checkpoint
# (phase 2's) into a LoRA model: the base weights land in ``base_layer`` and the adapters keep their initialisation
# (``lora_B`` is zero, so the LoRA model starts exactly where the plain one was). Only wrapping and merging need the
# ``peft`` package (``pip install "arrcoc[peft]"``); the name helpers do not.

PEFT_WRAPPER = "base_model.model."  # what peft's PeftModel puts in front of the wrapped model's names
BASE_LAYER = ".base_layer."  # what a LoRA layer puts between its name and the original layer's weights
ADAPTER_MARK = "lora_"  # lora_A, lora_B, lora_embedding_A/B, lora_magnitude_vector (DoRA), lora_dropout


@dataclass
class LoraSpec:
    """LoRA adapters on the LLM (YAML: ``model.init_args.model.llm.init_args.lora``).

    Args:
        r: rank of each adapter (the update of a ``d_out x d_in`` weight is ``B @ A``, ``B``: ``d_out x r``).
        alpha: scale of the update, applied as ``alpha / r``.
        dropout: dropout on the adapters' input in training.
        target_modules: ``all-linear`` (every linear layer of the decoder, not the output head) or module names
            such as ``[q_proj, k_proj, v_proj, o_proj]`` (a name matches every module whose name ends with it).
    """

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: str | list[str] = field(default="all-linear")

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"llm.lora.r={self.r!r} must be an integer >= 1 (the adapter rank, e.g. 16)")
        if self.alpha <= 0:
            raise ValueError(f"llm.lora.alpha={self.alpha!r} must be > 0 (the update is scaled by alpha / r)")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"llm.lora.dropout={self.dropout!r} must be in [0, 1)")
        names = [self.target_modules] if isinstance(self.target_modules, str) else list(self.target_modules)
        if not names or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"llm.lora.target_modules={self.target_modules!r} must be 'all-linear' or a non-empty "
                             "list of module names such as [q_proj, v_proj]")


def lora_spec(lora: LoraSpec | dict | None) -> LoraSpec | None:
    """``lora`` as a :class:`LoraSpec` (a plain dict from Python code is accepted too); ``None`` stays ``None``."""
    if lora is None or isinstance(lora, LoraSpec):
        return lora
    if isinstance(lora, dict):
        unknown = set(lora) - {"r", "alpha", "dropout", "target_modules"}
        if unknown:
            raise ValueError(f"llm.lora has unknown fields {sorted(unknown)}; valid: r, alpha, dropout, target_modules")
        return LoraSpec(**lora)
    raise ValueError(f"llm.lora={lora!r} must be a mapping {{r, alpha, dropout, target_modules}} or null")


def require_peft():
    """The ``peft`` module, or an ImportError saying how to install it."""
    try:
        import peft
    except ImportError:
        raise ImportError('llm.lora needs the peft package: pip install "arrcoc[peft]" (or pip install peft), '
                          "or set llm.lora: null") from None
    return peft


def wrap_lora(model: nn.Module, spec: LoraSpec, name: str) -> nn.Module:
    """``model`` (a transformers causal LM) wrapped in peft LoRA adapters as ``spec`` says; only the adapters train.

    A ``target_modules`` that matches nothing in ``model`` is an error naming the linear layers it has."""
    peft = require_peft()
    config = peft.LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, bias="none",
                             target_modules=spec.target_modules
                             if isinstance(spec.target_modules, str) else list(spec.target_modules))
    try:
        with warnings.catch_warnings():  # peft asks transformers a deprecated question; nothing for the user
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return peft.get_peft_model(model, config)
    except ValueError as err:
        if "not found in the base model" not in str(err) and "were not found" not in str(err):
            raise
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(f"llm.lora.target_modules={spec.target_modules!r} matches no module of {name!r}; its linear "
                         f"layers are named {linear} (or use 'all-linear')") from None


def merge_lora_model(model: nn.Module) -> nn.Module:
    """The plain transformers model inside a LoRA-wrapped ``model``, with each adapter's update added into its
    base weight (peft's ``merge_and_unload``): the same outputs, no adapters, the original state-dict names."""
    return model.merge_and_unload()


def is_adapter_key(key: str) -> bool:
    """Whether a state-dict key or parameter name belongs to a LoRA adapter (not to the base model)."""
    return any(part.startswith(ADAPTER_MARK) for part in key.split("."))


def plain_key(key: str) -> str:
    """The name ``key`` (of a LoRA model's base weight) has in the model without LoRA: peft's wrapper prefix and
    ``base_layer`` removed. Names without them come back unchanged."""
    return key.replace(PEFT_WRAPPER, "", 1).replace(BASE_LAYER, ".")


def to_lora_names(state: dict[str, Tensor], own_keys: set[str]) -> tuple[dict[str, Tensor], int]:
    """``state`` with every key the model lacks renamed to the model's LoRA name of the same weight, where it has
    one (a plain checkpoint loaded into a LoRA model); returns the renamed dict and how many keys were renamed.
    Keys the model has, and keys with no LoRA counterpart, are kept as they are (the caller reports them)."""
    lora_name = {plain_key(k): k for k in own_keys if plain_key(k) != k and not is_adapter_key(k)}
    renamed = {}
    for key, value in state.items():
        renamed[key if key in own_keys else lora_name.get(key, key)] = value
    moved = sum(1 for key in state if key not in own_keys and key in lora_name)
    return renamed, moved
