"""A real two-process DDP run on CPU (gloo): exactly-once validation, equal training batch counts on
uneven shards, and no hang (a timeout fails the test instead of hanging CI)."""

import json
from pathlib import Path

import pytest
from shardkit import add_to_manifest, write_broken_shard, write_dataset

from conftest import run_ddp

pytestmark = pytest.mark.slow  # two processes, each building a model and a trainer

SCRIPT = Path(__file__).with_name("ddp_data_script.py")


def test_two_process_ddp(tmp_path):
    train, val = tmp_path / "train", tmp_path / "val"
    write_dataset(train, [25, 1, 9, 2, 14])  # uneven: rank 0 gets shards 0, 2, 4 (48 samples), rank 1 gets 1, 3
    write_broken_shard(train / "data-000005.tar", str(tmp_path / "marker"), start=500)
    add_to_manifest(train, "data-000005.tar", 10)
    val_ids = write_dataset(val, [7, 4, 6], start=1000)
    good = write_broken_shard(val / "data-000003.tar", str(tmp_path / "marker"), start=2000)
    add_to_manifest(val, "data-000003.tar", 10)

    run_ddp([str(SCRIPT), str(train), str(val), str(tmp_path)])

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    # training: 40 samples per epoch / (2 ranks x 4) = 5 full batches on each rank, every epoch
    assert [r["train_batches"] for r in ranks] == [[5, 5], [5, 5]]
    # validation: 27 positions -> 14 per rank (one placeholder); equal batch counts; every sample once
    expected = sorted(val_ids + list(good.values()))
    for epoch in range(2):
        batches = [r["val"][epoch]["batches"] for r in ranks]
        assert batches[0] == batches[1]
        seen = ranks[0]["val"][epoch]["ids"] + ranks[1]["val"][epoch]["ids"]
        assert sorted(seen) == expected, "every readable validation sample exactly once across ranks"
    # the bad samples in the training shard are counted, and logged summed over ranks
    assert sum(r["skipped"] for r in ranks) > 0 and ranks[0]["logged_skipped"] >= ranks[0]["skipped"]
    assert not (tmp_path / "marker").exists()
