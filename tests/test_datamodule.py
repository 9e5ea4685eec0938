"""The streaming DataModule in one process: batch arithmetic, sources, evaluation coverage, caches."""

import shutil
from collections import Counter

import lightning as L
import numpy as np
import pytest
import torch
from shardkit import add_to_manifest, good_meta, write_broken_shard, write_dataset

from arrcoc.callbacks import DataStatsLogger
from arrcoc.data import model_inputs
from arrcoc.data.datamodule import VQADataModule
from arrcoc.data.shards import ShardWriter
from arrcoc.data.sources import SourceConfig
from arrcoc.data.stream import EpochDataLoader, EvalStream


def _dm(tmp_path, **kw):
    kw.setdefault("num_workers", 0)
    kw.setdefault("shuffle_buffer", 8)
    dm = VQADataModule(cache_dir=str(tmp_path / "cache"), **kw)
    dm.setup("fit")
    return dm


def _ids(loader):
    out = []
    for b in loader:
        out += [q for q, v in zip(b["question_id"], b.get("valid", [True] * len(b["question_id"])), strict=True)
                if v]
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_training_batches_are_full_and_counted(tmp_path, workers):
    write_dataset(tmp_path / "d", [13, 2, 30])
    dm = _dm(tmp_path, train=str(tmp_path / "d"), batch_size=4, samples_per_epoch=42, num_workers=workers)
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(loader) == len(batches) == 42 // 4
    assert all(len(b["question_id"]) == 4 and b["pixel_values"].shape == (4, 3, 96, 96) for b in batches)
    assert all(b["valid"].all() for b in batches)


def test_epochs_reshuffle_and_replay(tmp_path):
    write_dataset(tmp_path / "d", [20, 20])
    dm = _dm(tmp_path, train=str(tmp_path / "d"), batch_size=5, samples_per_epoch=40)
    first, second = _ids(dm.train_dataloader()), _ids(dm.train_dataloader())
    assert first != second  # a new epoch draws a new order
    again = _dm(tmp_path, train=str(tmp_path / "d"), batch_size=5, samples_per_epoch=40)
    assert _ids(again.train_dataloader()) == first  # same seed and epoch: same order (resumable)


def test_sources_mix_by_weight(tmp_path):
    write_dataset(tmp_path / "a", [50], start=0)
    write_dataset(tmp_path / "b", [50], start=1000)
    dm = _dm(tmp_path, train=[SourceConfig(str(tmp_path / "a"), weight=3.0), {"path": str(tmp_path / "b")}],
             batch_size=10, samples_per_epoch=800)
    ids = _ids(dm.train_dataloader())
    share_a = sum(i < 1000 for i in ids) / len(ids)
    assert 0.65 < share_a < 0.85


def test_brace_pattern_and_pipe_sources(tmp_path):
    write_dataset(tmp_path / "d", [6, 6, 6])
    pattern = str(tmp_path / "d" / "data-{000000..000001}.tar")
    dm = _dm(tmp_path, train=pattern, batch_size=4, samples_per_epoch=8)
    assert dm.sources["train"][0].urls[-1].endswith("data-000001.tar")
    assert set(_ids(dm.train_dataloader())) <= set(range(12))
    pipe = f"pipe:cat {tmp_path}/d/data-{{000000..000002}}.tar"
    dm = _dm(tmp_path, train=pipe, batch_size=6, samples_per_epoch=18)
    assert len(dm.sources["train"][0].urls) == 3 and len(_ids(dm.train_dataloader())) == 18


def test_missing_and_unreadable_sources_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        _dm(tmp_path, train=str(tmp_path / "nowhere"))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.tar").write_bytes(b"\0" * 100)
    dm = _dm(tmp_path, train=str(tmp_path / "junk"), batch_size=2, samples_per_epoch=4)
    with pytest.raises(RuntimeError, match="no readable samples .*x.tar"):
        list(dm.train_dataloader())
    with pytest.raises(ValueError, match="samples_per_epoch must be set"):
        _dm(tmp_path, train=str(tmp_path / "junk" / "x.tar")).train_dataloader()


def test_bad_samples_are_skipped_in_training(tmp_path):
    d = tmp_path / "d"
    write_dataset(d, [5])
    good = write_broken_shard(d / "data-000001.tar", str(tmp_path / "marker"), start=100)
    dm = _dm(tmp_path, train=f"{d}/data-{{000000..000001}}.tar", batch_size=3, samples_per_epoch=30)
    ids = _ids(dm.train_dataloader())
    assert len(ids) == 30 and set(ids) <= set(range(5)) | set(good.values())
    assert not (tmp_path / "marker").exists()


@pytest.mark.parametrize("workers", [0, 2])
def test_evaluation_sees_every_sample_once_with_placeholders(tmp_path, workers):
    d = tmp_path / "d"
    ids = write_dataset(d, [7, 4])
    good = write_broken_shard(d / "data-000002.tar", str(tmp_path / "marker"), start=100)
    add_to_manifest(d, "data-000002.tar", 10)
    dm = _dm(tmp_path, val=str(d), eval_batch_size=4, num_workers=workers)
    loader = dm.val_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader)
    seen = _ids(batches)
    assert sorted(seen) == sorted(ids + list(good.values()))  # each readable sample exactly once
    total = sum(len(b["question_id"]) for b in batches)
    assert total == 21  # bad samples became placeholders: positions are kept
    placeholders = sum(int((~b["valid"]).sum()) for b in batches)
    assert placeholders == 21 - len(seen)


def test_evaluation_split_across_ranks(tmp_path):
    ids = write_dataset(tmp_path / "d", [9, 1, 13])  # 23 samples over 3 ranks: 8, 8, 7 (+1 placeholder)
    dm = _dm(tmp_path, val=str(tmp_path / "d"), eval_batch_size=3)
    streams = [EvalStream(dm.sources["val"], dm.eval_stream("val").preprocess, dm.eval_stream("val").placeholder,
                          dm._collate, 3, rank=r, world_size=3, num_workers=2) for r in range(3)]
    counts = {s.num_batches(2) for s in streams}
    assert len(counts) == 1
    seen = []
    for s in streams:
        batches = list(EpochDataLoader(s, lambda: 0, num_workers=2))
        assert len(batches) == len(s) == 4  # ceil(8 / 2 workers / 3) = 2 batches per worker
        seen += _ids(batches)
    assert sorted(seen) == ids


def test_feature_cache_samples_feed_the_model(tmp_path, shared_tiny_model):
    model = shared_tiny_model
    with ShardWriter(tmp_path / "f", samples_per_shard=4) as w:
        for i in range(6):
            w.write(f"f{i}", good_meta(i), features=np.random.rand(576, 64).astype(np.float16))
    dm = _dm(tmp_path, val=str(tmp_path / "f"), eval_batch_size=3)
    batch = next(iter(dm.val_dataloader()))
    assert batch["patch_features"].shape == (3, 576, 64) and "pixel_values" not in batch
    with torch.no_grad():
        out = model(**model_inputs(batch))
    assert torch.isfinite(out.loss)


def test_sample_task_generated_on_first_use(tmp_path):
    from arrcoc.data.sample_task import SampleTaskConfig

    cfg = SampleTaskConfig(train=24, val=8, samples_per_shard=10)
    dm = VQADataModule(sample_task=cfg, cache_dir=str(tmp_path / "c"), batch_size=4, num_workers=0)
    dm.prepare_data()
    stamp = (tmp_path / "c" / "train" / "train-000000.tar").stat().st_mtime_ns
    dm.prepare_data()  # current: nothing regenerated
    assert (tmp_path / "c" / "train" / "train-000000.tar").stat().st_mtime_ns == stamp
    dm.setup("fit")
    assert len(dm.train_dataloader()) == 6 and len(_ids(dm.val_dataloader())) == 8
    shutil.rmtree(tmp_path / "c" / "val")
    dm.prepare_data()  # stale cache: regenerated
    assert (tmp_path / "c" / "val" / "manifest.json").exists()


class _Probe(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, idx):
        return (self.w * batch["pixel_values"].mean()).sum() + self.w.sum() ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_skips_are_logged_as_data_skipped(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    write_broken_shard(d / "data-000000.tar", str(tmp_path / "marker"))
    dm = VQADataModule(train=str(d / "data-000000.tar"), batch_size=2, samples_per_epoch=8, num_workers=0,
                       shuffle_buffer=1, cache_dir=str(tmp_path / "c"))
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[DataStatsLogger()])
    trainer.fit(_Probe(), datamodule=dm)
    assert trainer.callback_metrics["data/skipped"] >= 6  # 6 bad samples per pass over the shard
    assert Counter(dm.skipped_by_reason())["missing_image"] >= 2
