"""``arrcoc data bench``: how many samples per second the loader delivers, per worker and in total."""

from __future__ import annotations

import time

from arrcoc.data.collate import collate_vqa
from arrcoc.data.preprocess import VQAPreprocessor
from arrcoc.data.prompt import VQAPromptBuilder
from arrcoc.data.sources import resolve
from arrcoc.data.stream import EpochDataLoader, TrainStream
from arrcoc.processing import build_tokenizer, build_transform, transform_size


def _stream(path: str, encoder: str, llm: str, batch_size: int, batches: int) -> TrainStream:
    transform = build_transform(encoder)
    tok = build_tokenizer(llm)
    pre = VQAPreprocessor(transform, VQAPromptBuilder(tok), train=True, image_size=transform_size(encoder))
    return TrainStream([resolve(path)], pre, lambda s: collate_vqa(s, tok.pad_token_id), batch_size, batches,
                       shuffle_buffer=100)


def _rate(loader, batches: int, batch_size: int) -> float:
    it = iter(loader)
    next(it)  # start-up (worker spawn, first shard open) is not throughput
    t0 = time.perf_counter()
    for _ in range(batches - 1):
        next(it)
    return (batches - 1) * batch_size / (time.perf_counter() - t0)


def run_bench(path: str, encoders: list[str], llm: str, workers: int, samples: int, batch_size: int) -> int:
    batches = max(samples // batch_size, 3)
    print(f"{'encoder':22s}{'image':>8s}{'1 worker (s/s)':>16s}{f'{workers} workers (s/s)':>18s}")
    for encoder in encoders:
        single = _rate(iter(_stream(path, encoder, llm, batch_size, batches)), batches, batch_size)
        stream = _stream(path, encoder, llm, batch_size, batches * max(workers, 1))
        loader = EpochDataLoader(stream, lambda: 0, num_workers=workers)
        total = _rate(loader, batches * max(workers, 1), batch_size)
        size = transform_size(encoder)[0]
        print(f"{encoder:22s}{str(size):>8s}{single:>16.0f}{total:>18.0f}", flush=True)
    print(f"decode + transform + tokenize ({llm}) + collate, batch {batch_size}; start-up excluded")
    return 0
