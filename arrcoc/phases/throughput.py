"""Training throughput over all ranks, measured step to step."""

from __future__ import annotations

import time

from torch import Tensor


class Throughput:
    """Samples and visual tokens per second of all ranks: this rank's rate times the number of ranks (they
    step together on equal batches). The clock runs from one training step to the next; :meth:`reset` when
    something else takes the time in between (validation, writing a checkpoint, a new fit)."""

    def __init__(self) -> None:
        self._last: float | None = None

    def reset(self) -> None:
        self._last = None

    def step(self, samples: int, visual_tokens: Tensor, world_size: int) -> dict[str, float]:
        """Call once per training step; returns ``perf/samples_per_s`` and ``perf/visual_tokens_per_s`` since
        the previous call, or ``{}`` on the first step after a reset.

        Args:
            samples: this rank's batch size.
            visual_tokens: visual tokens per sample on this rank, ``(samples,)``.
        """
        now = time.perf_counter()
        rates = {}
        if self._last is not None:
            dt = now - self._last
            rates = {"perf/samples_per_s": samples * world_size / dt,
                     "perf/visual_tokens_per_s": float(visual_tokens.sum()) * world_size / dt}
        self._last = now
        return rates
