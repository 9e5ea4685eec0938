"""Evaluation hides no loss: it says how many samples it evaluated and how many it could not, per reason,
and a source with no readable sample fails, naming it, instead of reporting an accuracy of 0."""

import logging

import lightning as L
import pytest
from shardkit import good_meta, png, write_dataset

from arrcoc.data.datamodule import VQADataModule
from arrcoc.data.shards import ShardWriter
from arrcoc.phases import AlignPhase


def _validate(model, val: str, tmp_path):
    dm = VQADataModule(val=val, eval_batch_size=4, num_workers=0)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    return trainer.validate(AlignPhase(model, max_new_tokens=2), datamodule=dm, verbose=False)


def test_a_source_with_no_readable_sample_fails_naming_it(tmp_path, tiny_model):
    d = tmp_path / "bad"
    with ShardWriter(d, samples_per_shard=10) as w:
        for i in range(6):
            w.write(f"k{i}", good_meta(i), image=b"\x89PNG\r\n\x1a\n not an image", image_ext="png")
    with pytest.raises(RuntimeError, match=rf"val: no sample of \['{d}'\] could be evaluated .*bad_image: 6"):
        _validate(tiny_model, str(d), tmp_path)


def test_the_evaluation_reports_what_it_evaluated_and_skipped(tmp_path, tiny_model, caplog):
    d = tmp_path / "mixed"
    write_dataset(d, [5])
    with ShardWriter(tmp_path / "extra", samples_per_shard=10) as w:  # a second source with one bad sample
        w.write("bad", good_meta(99), image=b"garbage", image_ext="png")
        w.write("good", good_meta(98), image=png(98), image_ext="png")
    dm_val = [str(d), str(tmp_path / "extra")]
    with caplog.at_level(logging.INFO, logger="arrcoc"):
        dm = VQADataModule(val=dm_val, eval_batch_size=4, num_workers=0)
        trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, default_root_dir=tmp_path)
        trainer.validate(AlignPhase(tiny_model, max_new_tokens=2), datamodule=dm, verbose=False)
    assert "val: evaluated 6 samples; not evaluated: bad_image: 1" in caplog.text
