"""The data stream's stages one by one, the one tar-reading helper, and where data statistics go."""

import random
import tarfile

import pytest
from shardkit import add_member, add_to_manifest, good_meta, png, write_broken_shard, write_dataset

from arrcoc.data import model_inputs, stages
from arrcoc.data.datamodule import VQADataModule
from arrcoc.data.shards import ShardWriter, Skip, iter_tar, shard_samples
from arrcoc.data.sources import count_samples, first_sample, resolve
from arrcoc.data.stats import SkipCounter
from arrcoc.data.stream import EpochDataLoader, TrainStream, decoded


def _old_shuffle(items, size, rng):
    """The shuffle of the single loop TrainStream had before its stages (no drain: its input was endless)."""
    buffer = []
    for item in items:
        buffer.append(item)
        if len(buffer) < size:
            continue
        yield buffer.pop(rng.randrange(len(buffer)))


@pytest.mark.parametrize("size", [2, 8, 1000])
def test_shuffle_keeps_the_order_of_the_old_loop(size):
    for seed in range(3):
        got = list(stages.shuffled(range(3000), size, random.Random(seed)))
        want = list(_old_shuffle(range(3000), size, random.Random(seed)))
        assert got[: len(want)] == want  # same draws, same order: the demo's batches do not change
        assert sorted(got) == list(range(3000))  # a finite input is drained, nothing lost
    assert list(stages.shuffled(range(3000), size, random.Random(0))) != list(range(3000))


def test_a_buffer_of_one_changes_nothing_and_draws_nothing():
    rng = random.Random(5)
    before = rng.getstate()
    assert list(stages.shuffled(iter("abc"), 1, rng)) == ["a", "b", "c"]
    assert rng.getstate() == before


def _reference_order(sources, seed, epoch, buffer, batches, batch_size):
    """What the old single loop drew, for one worker of one rank, all from one RNG: a source by weight
    (only with several), a shard by rng.choice whenever one runs out, then the shuffle's randrange."""
    rng = random.Random(f"{seed}/{epoch}/0/0")

    def resampled(urls):
        while True:
            yield from (int(r.key[1:]) for r in shard_samples(rng.choice(urls), lambda s: None))

    streams = [resampled(s.urls) for s in sources]
    pool, out = [], []
    while len(out) < batches * batch_size:
        i = rng.choices(range(len(streams)), [s.weight for s in sources])[0] if len(streams) > 1 else 0
        pool.append(next(streams[i]))
        if len(pool) >= buffer:
            out.append(pool.pop(rng.randrange(len(pool))))
    return [out[i:i + batch_size] for i in range(0, len(out), batch_size)]


@pytest.mark.parametrize("weights", [(1.0,), (3.0, 1.0)])
def test_training_stream_draws_in_the_documented_order(tmp_path, weights):
    write_dataset(tmp_path / "a", [7, 5, 9], start=0)
    write_dataset(tmp_path / "b", [6, 4], start=1000)
    sources = [resolve({"path": str(tmp_path / d), "weight": w}) for d, w in zip("ab", weights, strict=False)]

    def stream(skip=0):
        s = TrainStream(sources, lambda x: x["question_id"], lambda xs: {"ids": xs}, 3, 8, shuffle_buffer=4, seed=11)
        s.epoch, s.skip_batches = 2, skip
        return list(s)

    want = _reference_order(sources, 11, 2, 4, 8, 3)
    got = stream()
    assert [b["ids"] for b in got] == want
    assert all(b["data_stats"] == {"worker": (0, 0, 2), "skipped": {}} for b in got)
    assert [b["ids"] for b in stream(skip=3)] == want[3:]  # a mid-epoch resume: the same batches 3..7


def test_usable_drops_skips_and_gives_up_after_too_many_in_a_row():
    skip = Skip("u", "k", "no_answer")
    assert list(stages.usable([skip] * 3 + [{"a": 1}] + [skip] * 3 + [{"a": 2}], 3, dict)) == [{"a": 1}, {"a": 2}]
    with pytest.raises(RuntimeError, match=r"4 samples in a row could not be used \(skipped: \{'no_answer': 4\}\)"):
        list(stages.usable([{"a": 1}] + [skip] * 10, 3, lambda: {"no_answer": 4}))


def test_resumed_drops_the_first_batches_and_reads_no_further_than_needed():
    pulled = []

    def batches():
        for i in range(100):
            pulled.append(i)
            yield i

    assert list(stages.resumed(batches(), 2, 5)) == [2, 3, 4]
    assert pulled == [0, 1, 2, 3, 4]  # the dropped ones are drawn (same reads), nothing past the end


def test_batched_and_placeholders():
    assert list(stages.batched(range(7), 3)) == [[0, 1, 2], [3, 4, 5]]
    assert list(stages.batched(range(7), 3, partial=True))[-1] == [6]
    items = [{"q": 1}, Skip("u", "*", "padding"), {"q": 2}]
    assert list(stages.placeholders(items, lambda: {"q": -1})) == [{"q": 1}, {"q": -1}, {"q": 2}]


def test_decode_and_preprocess_stages_count_what_they_drop(tmp_path):
    write_broken_shard(tmp_path / "b.tar", str(tmp_path / "marker"), start=0)
    skips = SkipCounter()
    samples = stages.decoded(shard_samples(str(tmp_path / "b.tar"), skips), skips)
    out = list(stages.preprocessed(samples, lambda s: s if s["question_id"] != 7 else _refuse(), skips))
    assert [type(x).__name__ for x in out].count("Skip") == 7 and len(out) == 10  # every position kept
    assert dict(skips.counts) == {"bad_image": 1, "missing_json": 1, "bad_json": 1, "missing_field": 1,
                                  "missing_image": 2, "no_answer": 1}
    assert [x.key for x in out if isinstance(x, Skip) and x.reason == "no_answer"] == ["b0007"]


def _refuse():
    from arrcoc.data.shards import BadSample

    raise BadSample("no_answer", "refused")


def test_shard_samples_is_the_one_reader_and_counts_every_skip(tmp_path):
    write_dataset(tmp_path / "d", [4])
    with tarfile.open(tmp_path / "d" / "data-000000.tar", "a") as tar:
        add_member(tar, "README.txt", b"not a sample")
    _cut_inside(tmp_path / "d" / "data-000000.tar", "s0000001.png", tmp_path / "cut.tar")
    seen = []
    assert [r.key for r in shard_samples(str(tmp_path / "d" / "data-000000.tar"), seen.append)] == [
        f"s{i:07d}" for i in range(4)]  # the stray README takes no position
    assert [r.key for r in shard_samples(str(tmp_path / "cut.tar"), seen.append)] == ["s0000000", "s0000001"]
    assert list(shard_samples(str(tmp_path / "nope.tar"), seen.append)) == []
    assert [s.reason for s in seen] == ["unreadable_shard", "unreadable_shard"]
    # its callers: counting a source without a manifest, and peeking at the first sample
    (tmp_path / "d" / "manifest.json").unlink()
    src = count_samples(resolve(str(tmp_path / "d")))
    assert src.counts == [4] and first_sample([src])["question_id"] == 0


def _cut_inside(shard, member, out):
    """A copy of ``shard`` that ends in the middle of ``member``'s data (a download cut short)."""
    with tarfile.open(shard) as tar:
        info = tar.getmember(member)
    out.write_bytes(shard.read_bytes()[: info.offset_data + info.size // 2])


def test_decoded_shard_yields_each_skip_in_its_place(tmp_path):
    write_dataset(tmp_path / "d", [3])
    _cut_inside(tmp_path / "d" / "data-000000.tar", "s0000001.png", tmp_path / "cut.tar")
    skips = SkipCounter()
    items = list(decoded(str(tmp_path / "cut.tar"), skips))
    assert [x["question_id"] if isinstance(x, dict) else x.reason for x in items] == [
        0, "unreadable_shard", "unreadable_member"]
    assert dict(skips.counts) == {"unreadable_shard": 1, "unreadable_member": 1}


def test_keys_group_as_webdataset_groups_them(tmp_path):
    with tarfile.open(tmp_path / "x.tar", "w") as tar:
        add_member(tar, "00000/a.json", b"{}")
        add_member(tar, "00000/a.seg.png", b"p")  # an extension with a dot
        add_member(tar, "00000/._a.jpg", b"macOS metadata")  # hidden: ignored (webdataset would keep it)
        add_member(tar, "00000/b.JSON", b"{}")  # extensions are lower-cased
        add_member(tar, "NOTES", b"no extension")
    assert [(r.key, sorted(r.files)) for r in iter_tar(str(tmp_path / "x.tar"))] == [
        ("00000/a", ["json", "seg.png"]), ("00000/b", ["json"])]


def test_the_loader_is_where_data_stats_are_read(tmp_path):
    d = tmp_path / "d"
    write_dataset(d, [6])
    write_broken_shard(d / "data-000001.tar", str(tmp_path / "marker"), start=100)
    add_to_manifest(d, "data-000001.tar", 10)
    dm = VQADataModule(train=str(d / "data-000001.tar"), val=str(d), batch_size=2, eval_batch_size=4,
                       samples_per_epoch=8, num_workers=0, shuffle_buffer=1, cache_dir=str(tmp_path / "c"))
    dm.setup("fit")
    batches = list(dm.val_dataloader())  # outside Lightning: the counts are there all the same
    assert dm.skipped_eval == 6 and dm.skipped == 0
    assert dm.skipped_by_reason() == {"bad_image": 1, "missing_json": 1, "bad_json": 1, "missing_field": 1,
                                      "missing_image": 2}
    assert "data_stats" not in model_inputs(batches[0])
    assert "data_stats" not in dm.on_before_batch_transfer(batches[0], 0)  # the step never sees it
    list(dm.train_dataloader())
    assert dm.skipped >= 6 and dm.skipped_eval == 6  # training and evaluation are kept apart


@pytest.mark.parametrize("workers", [0, 2])
def test_the_loader_keeps_each_workers_latest_counts(tmp_path, workers):
    d = tmp_path / "d"
    with ShardWriter(d, samples_per_shard=5) as w:
        for i in range(20):
            meta = good_meta(i) if i % 2 else {"question": "q?", "answers": [], "question_id": i}
            w.write(f"k{i}", meta, image=png(i), image_ext="png")
    dm = VQADataModule(train=str(d), batch_size=2, samples_per_epoch=12, num_workers=workers, shuffle_buffer=1,
                       cache_dir=str(tmp_path / "c"))
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader, EpochDataLoader)
    last = {}
    for b in loader:
        last[tuple(b["data_stats"]["worker"])] = b["data_stats"]["skipped"]
    assert loader.stats == last and set(last) == {(0, w, 0) for w in range(max(workers, 1))}
    assert loader.skipped == dm.skipped > 0 and all(set(c) == {"no_answer"} for c in last.values())
    first = dm.skipped
    list(dm.train_dataloader())  # the next epoch adds rows of its own: totals add up across epochs
    assert {k[2] for k in dm.skip_tables["train"]} == {0, 1} and dm.skipped > first
