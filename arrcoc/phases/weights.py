"""``init_from``: a previous phase's weights into a model, and a report of what each component got.

A phase starts from the last one's checkpoint: the components both phases share load, the new ones keep
their initialisation. Anything else in the file (a tensor of another shape, a weight this model lacks) is
an error naming it, never silently dropped. The allocator's budget is configuration (non-persistent
buffers), so no checkpoint holds it and each phase's config sets its own.

An LLM with LoRA adapters (``llm.lora``) names its base weights as peft does: a checkpoint without LoRA (the
previous phase's) loads into it by the plain names (:func:`arrcoc.language_model.to_lora_names`), and its adapters keep
their initialisation (reported as ``loaded (LoRA adapters: init)``). A checkpoint with adapters loads only into a
model with the same LoRA settings; for a model without LoRA, merge the adapters first (``merge_lora``).
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import torch
from torch import Tensor, nn

from arrcoc.language_model import is_adapter_key, to_lora_names
from arrcoc.phases.zero3 import full_shape, gathered, is_partitioned

log = logging.getLogger("arrcoc.train")


def load_weights(model: nn.Module, path: str) -> dict[str, str]:
    """Load the weights in ``path`` into ``model``; returns ``{component: "loaded" | "partial (k/n)" | "init"}``
    over ``model.components()`` (an :class:`~arrcoc.model.ARRCOCModel`).

    ``path`` is a Lightning checkpoint (``state_dict`` with ``model.`` prefixes) or a plain state dict (the
    consolidated DeepSpeed file). A missing file, pickled objects besides tensors, a tensor whose shape
    differs, or a weight the model lacks is a ``FileNotFoundError`` / ``ValueError`` naming it.
    """
    own = model.state_dict(keep_vars=True)  # parameters themselves: a ZeRO-3 one knows its whole shape
    state, renamed = to_lora_names(read_state_dict(path), set(own))
    if renamed:
        log.info("init_from %s: %d weights of an LLM without LoRA loaded into the base of this LoRA model", path,
                 renamed)
    bad = [f"{k}: {tuple(v.shape)} in file vs {full_shape(own[k])} in model"
           for k, v in state.items() if k in own and tuple(v.shape) != full_shape(own[k])]
    if bad:
        raise ValueError(f"init_from={path!r} does not match this architecture: " + "; ".join(bad[:5]))
    unexpected = sorted(k for k in state if k not in own)
    adapters = [k for k in unexpected if is_adapter_key(k)]
    if adapters:
        has_lora = any(is_adapter_key(k) for k in own)
        raise ValueError(
            f"init_from={path!r} holds LoRA adapters this model lacks (e.g. {adapters[0]!r}, {len(adapters)} in all): "
            + ("this model's llm.lora targets other modules; give it the llm.lora of the run that wrote the file"
               if has_lora else "this model has llm.lora: null; give it the llm.lora of the run that wrote the file, "
               "or merge the adapters into the base weights first (LanguageModel.merge_lora, docs/scale-out.md)"))
    if unexpected:
        raise ValueError(f"init_from={path!r} has weights this model lacks: {unexpected[:5]}"
                         + (f" (+{len(unexpected) - 5} more)" if len(unexpected) > 5 else ""))
    if any(is_partitioned(t) for t in own.values()):
        _load_partitioned(own, state)
    else:
        model.load_state_dict(state, strict=False)
    report = coverage(model, set(state))
    log.info("init_from %s: %s", path, ", ".join(f"{k} {v}" for k, v in report.items()))
    return report


def _load_partitioned(own: dict[str, Tensor], state: dict[str, Tensor]) -> None:
    """Copy ``state`` into a model whose weights are split by ZeRO-3 (a deferred LLM built in ``configure_model``):
    one weight at a time gathered whole, written, and split back, so no rank holds the whole model. Every rank
    reads the same file and takes part in each gather; rank 0's copy is the one that is kept."""
    with torch.no_grad():
        for key, value in state.items():
            target = own[key]
            with gathered([target], modifier_rank=0):
                target.data.copy_(value)


def read_state_dict(path: str) -> dict[str, Tensor]:
    """The tensors in ``path`` keyed as in the model (a Lightning checkpoint's ``model.`` prefix removed),
    read with ``weights_only=True``: a file is never allowed to run code."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"init_from={path!r} does not exist (give the previous phase's checkpoint)")
    if file.stat().st_size == 0:
        raise ValueError(f"init_from={path!r} is an empty file (0 bytes: a save that was cut off?); give a complete "
                         "checkpoint such as the previous phase's .../checkpoints/last.ckpt")
    try:
        blob = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"init_from={path!r} holds Python objects besides tensors, which are not unpickled for safety "
            f"({str(err).splitlines()[-1].strip()[:200]}); re-save it as {{'state_dict': ...}} of tensors") from None
    except Exception as err:  # noqa: BLE001 - torch raises many types for what is not a checkpoint
        raise ValueError(
            f"init_from={path!r} is not a readable checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:200]}"
            "); expected a file written by torch.save, such as the previous phase's .../checkpoints/last.ckpt "
            "(a truncated or text file reads like this)") from None
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"init_from={path!r} holds no state dict")
    return {k.removeprefix("model."): v for k, v in state.items()}


def coverage(model: nn.Module, keys: set[str]) -> dict[str, str]:
    """Per component of ``model``: ``loaded`` (every state-dict entry among ``keys``), ``init`` (none) or
    ``partial (k/n)``; ``loaded (LoRA adapters: init)`` where every base weight loaded and no LoRA adapter did
    (a checkpoint without LoRA into a LoRA model: the adapters start from their initialisation by design)."""
    names = {id(module): name for name, module in model.named_modules()}
    report = {}
    for component, module in model.components().items():
        prefix = f"{names[id(module)]}." if names[id(module)] else ""
        own = [f"{prefix}{k}" for k in module.state_dict()]
        hit = sum(k in keys for k in own)
        adapters = [k for k in own if is_adapter_key(k)]
        if adapters and hit == len(own) - len(adapters) and not any(k in keys for k in adapters):
            report[component] = "loaded (LoRA adapters: init)"
            continue
        report[component] = "loaded" if hit == len(own) else ("init" if hit == 0 else f"partial ({hit}/{len(own)})")
    return report
