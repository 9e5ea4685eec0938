"""The streaming DataModule in one process: batch arithmetic, sources, evaluation coverage, caches."""

import json
import shutil
from collections import Counter

import lightning as L
import numpy as np
import pytest
import torch
from shardkit import add_to_manifest, good_meta, png, write_broken_shard, write_dataset

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
    from arrcoc.data.sample_task import LAYOUTS, SampleTaskConfig

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
    # a copy made by another scene geometry (a module constant, not a config field) is stale too
    stamp_file = tmp_path / "c" / "config.json"
    old = json.loads(stamp_file.read_text())
    assert old == cfg.stamp() and old["version"] == 4
    assert old["scene"] == [[name, s.weight, list(s.objects), list(s.radius)] for name, s in LAYOUTS.items()]
    stamp_file.write_text(json.dumps({**old, "scene": [[2, 6], [0.0625, 0.1]]}))
    dm.prepare_data()
    assert json.loads(stamp_file.read_text()) == cfg.stamp()
    assert (tmp_path / "c" / "train" / "train-000000.tar").stat().st_mtime_ns != stamp


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


class _Recorder(_Probe):
    def __init__(self):
        super().__init__()
        self.ids: dict[int, list] = {}

    def training_step(self, batch, idx):
        self.ids.setdefault(self.current_epoch, []).extend(batch["question_id"])
        return super().training_step(batch, idx)


def test_resume_draws_the_order_an_uninterrupted_run_draws(tmp_path):
    write_dataset(tmp_path / "d", [12, 12])

    def fit(epochs, ckpt=None, workers=2):
        dm = VQADataModule(train=str(tmp_path / "d"), batch_size=4, samples_per_epoch=24, num_workers=workers,
                           shuffle_buffer=4, cache_dir=str(tmp_path / "c"))
        mod = _Recorder()
        trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                            enable_model_summary=False, default_root_dir=str(tmp_path / "run"),
                            callbacks=[L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", save_top_k=-1,
                                                                            filename="{epoch}")])
        trainer.fit(mod, datamodule=dm, ckpt_path=ckpt)
        return mod.ids

    full = fit(2)
    assert full[0] != full[1]
    resumed = fit(2, ckpt=str(tmp_path / "ck" / "epoch=0.ckpt"))
    assert resumed == {1: full[1]}


def test_training_gives_up_on_a_source_where_nothing_is_usable(tmp_path):
    d = tmp_path / "d"
    with ShardWriter(d, samples_per_shard=50) as w:
        for i in range(50):
            w.write(f"k{i}", {"question": "q?", "answers": [], "question_id": i}, image=png(i), image_ext="png")
    dm = _dm(tmp_path, train=str(d), batch_size=2, samples_per_epoch=4, shuffle_buffer=1)
    with pytest.raises(RuntimeError, match="could not be used .*no_answer"):
        list(dm.train_dataloader())


def test_feature_placeholders_and_manifest_mismatch(tmp_path):
    d = tmp_path / "f"
    with ShardWriter(d, samples_per_shard=100) as w:
        for i in range(5):
            w.write(f"f{i}", good_meta(i), features=np.zeros((576, 64), np.float16))
    add_to_manifest(d, "data-000000.tar", 0)  # listed twice: the second listing finds 5 where 0 are due
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["shards"][0]["samples"] = 7  # claims 7, holds 5
    manifest["shards"] = manifest["shards"][:1]
    manifest["total"] = 7
    (d / "manifest.json").write_text(json.dumps(manifest))
    dm = _dm(tmp_path, val=str(d), eval_batch_size=4)
    batches = list(dm.val_dataloader())
    assert all("patch_features" in b and "pixel_values" not in b for b in batches)
    assert sum(len(b["question_id"]) for b in batches) == 7 and len(_ids(batches)) == 5
    assert batches[-1]["data_stats"]["skipped"] == {"manifest_mismatch": 2}  # two samples lost, counted as two


def test_samples_past_an_undercounting_manifest_are_counted_not_lost(tmp_path):
    d = tmp_path / "f"
    with ShardWriter(d, samples_per_shard=100) as w:
        for i in range(8):
            w.write(f"f{i}", good_meta(i), features=np.zeros((576, 64), np.float16))
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["shards"][0]["samples"] = manifest["total"] = 5  # claims 5, holds 8
    (d / "manifest.json").write_text(json.dumps(manifest))
    batches = list(_dm(tmp_path, val=str(d), eval_batch_size=4).val_dataloader())
    assert len(_ids(batches)) == 5  # positions follow the manifest on every rank
    assert batches[-1]["data_stats"]["skipped"] == {"manifest_undercount": 3}


def test_stray_files_take_no_sample_position(tmp_path):
    import tarfile

    from shardkit import add_member

    d = tmp_path / "d"
    write_dataset(d, [4])
    with tarfile.open(d / "data-000000.tar", "a") as tar:
        add_member(tar, "README.txt", b"not a sample")
    dm = _dm(tmp_path, val=str(d), eval_batch_size=2)
    assert sorted(_ids(dm.val_dataloader())) == [0, 1, 2, 3]


def test_evaluation_decodes_only_its_own_range(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    write_broken_shard(d / "data-000000.tar", str(tmp_path / "m"))
    (d / "manifest.json").write_text(json.dumps({"shards": [{"name": "data-000000.tar", "samples": 10}],
                                                 "total": 10}))
    dm = _dm(tmp_path, val=str(d), eval_batch_size=3, num_workers=2)
    last = {}
    for b in dm.val_dataloader():
        last[tuple(b["data_stats"]["worker"])] = sum(b["data_stats"]["skipped"].values())
    assert sum(last.values()) == 6  # each bad sample counted once, by the worker that owns it


def test_explicit_manifest_file_for_a_brace_pattern(tmp_path):
    d = tmp_path / "d"
    write_dataset(d, [3, 2])
    (d / "manifest.json").rename(d / "val-manifest.json")
    src = SourceConfig(f"{d}/data-{{000000..000001}}.tar", manifest=str(d / "val-manifest.json"))
    dm = _dm(tmp_path, val=[src], eval_batch_size=2)
    assert dm.sources["val"][0].counts == [3, 2] and sorted(_ids(dm.val_dataloader())) == list(range(5))
    dm = _dm(tmp_path, val=f"{d}/data-{{000000..000001}}.tar", eval_batch_size=2)  # no manifest: counted
    assert sorted(_ids(dm.val_dataloader())) == list(range(5))


def test_a_truncated_shard_counts_each_lost_sample_once(tmp_path):
    d = tmp_path / "t"
    write_dataset(d, [20])
    shard = next(d.glob("*.tar"))
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])  # cut off mid-stream, as a failed copy leaves it
    batches = list(_dm(tmp_path, val=str(d), eval_batch_size=8).val_dataloader())
    evaluated = len(_ids(batches))
    skipped = batches[-1]["data_stats"]["skipped"]
    assert 0 < evaluated < 20
    assert sum(skipped.values()) == 20 - evaluated, skipped  # samples, not events (the shard-level one is logged)
