"""DeepSpeed ZeRO-3 and the phases: building the LLM split from the start, and loading weights into split ones.

Under ZeRO-3 each weight lives split across the ranks: outside forward and backward a parameter holds an empty
tensor (its real shape in ``ds_shape``) and each rank one partition (``ds_tensor``). A phase whose LLM is deferred
(``llm.deferred: true``) builds it in ``configure_model``, inside the ``deepspeed.zero.Init`` that Lightning's
DeepSpeed strategy opens there; :func:`transformers_zero3_config` tells transformers so that ``from_pretrained``
loads each weight into its partitions. :func:`is_partitioned` and :func:`gathered` let ``init_from`` (and
anything else that reads or writes whole weights) work on split parameters.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

from torch import nn


def is_partitioned(param: Any) -> bool:
    """Whether ``param`` is a ZeRO-3 parameter (created under ``deepspeed.zero.Init``, or converted by the engine)."""
    return isinstance(param, nn.Parameter) and hasattr(param, "ds_id")


def full_shape(tensor: Any) -> tuple[int, ...]:
    """A tensor's whole shape, also for a ZeRO-3 parameter (whose own ``shape`` is empty between uses)."""
    return tuple(getattr(tensor, "ds_shape", tensor.shape))


@contextlib.contextmanager
def gathered(params: Iterable[nn.Parameter], modifier_rank: int | None = None) -> Iterator[None]:
    """Inside, the ZeRO-3 parameters among ``params`` hold their whole tensors (every rank must enter: it is a
    collective); with ``modifier_rank`` what that rank writes is split back to every rank on exit. Other parameters
    pass through untouched, so callers need no DeepSpeed branch."""
    split = [p for p in params if is_partitioned(p)]
    if not split:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(split, modifier_rank=modifier_rank):
        yield


def transformers_zero3_config(strategy: Any) -> Any:
    """Under a ZeRO-3 DeepSpeed strategy, a live ``transformers`` ``HfDeepSpeedConfig`` of its config (transformers
    splits weights in ``from_pretrained`` only while one is alive: keep the returned object as long as the model);
    ``None`` for any other strategy. Call it where the strategy's config is final (in ``configure_model``)."""
    if not getattr(strategy, "zero_stage_3", False):
        return None
    from transformers.integrations import HfDeepSpeedConfig

    return HfDeepSpeedConfig(strategy.config)
