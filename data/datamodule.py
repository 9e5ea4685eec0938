"""The LightningDataModule: streams WebDataset shards of VQA samples to every rank."""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Any

import lightning as L
from filelock import FileLock
from torch.utils.data import IterableDataset

from arrcoc.data.collate import collate_vqa
from arrcoc.data.features import FeatureStamp, check_stamp, is_cache
from arrcoc.data.preprocess import VQAPreprocessor
from arrcoc.data.prompt import VQA_INSTRUCTION, VQAPromptBuilder
from arrcoc.data.sample_task import SampleTaskConfig, write_split
from arrcoc.data.shards import read_manifest
from arrcoc.data.sources import Source, SourceConfig, count_samples, first_sample, resolve
from arrcoc.data.stats import StatsTable, skipped_by_reason, total_skipped
from arrcoc.data.stream import EpochDataLoader, EvalStream, TrainStream
from arrcoc.presets import TINY_ENCODER, TINY_LM
from arrcoc.processing import build_tokenizer, build_transform, crop_geometry, transform_size
from arrcoc.processing.files import write_text

log = logging.getLogger("arrcoc.data")

# Our streams split work per worker themselves and report exact per-rank batch counts; Lightning's
# generic caution about __len__ on an IterableDataset with several workers does not apply.
warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")

SourceSpecs = str | list[str | SourceConfig] | None
DEFAULT_CACHE = os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "arrcoc", "sample-task")


class VQADataModule(L.LightningDataModule):
    """Streams VQA shards: resampled and shuffled for training, exactly-once for evaluation.

    Args:
        train, val, test: shard sources: a path (directory, shard, brace pattern, ``pipe:`` command)
            or a list of paths / ``{path, weight, manifest}`` entries (training mixes them by weight).
            Left empty while ``sample_task`` is set, they point at the generated sample task.
        encoder, encoder_pretrained: the open_clip name (and tag) whose preprocessing images get.
        llm: the LLM whose tokenizer and chat template build the prompts.
        batch_size, eval_batch_size: samples per batch per rank (``eval_batch_size`` defaults to it).
        num_workers: loader workers per rank.
        samples_per_epoch: training samples per epoch over all ranks; defaults to the manifests'
            total. Every rank yields ``samples_per_epoch // (world_size * batch_size)`` full batches.
        shuffle_buffer: samples held for shuffling in each worker.
        seed: shard resampling and shuffling seed (combined with epoch, rank and worker).
        instruction, max_question_tokens, image_first: prompt building (see ``VQAPromptBuilder``).
        sample_task: generate the bundled sample task on first use into ``cache_dir`` (rank 0 of
            each node, in ``prepare_data``) and use it where ``train``/``val`` are empty.
        cache_dir: where the sample task is generated.
    """

    def __init__(
        self,
        train: SourceSpecs = None,
        val: SourceSpecs = None,
        test: SourceSpecs = None,
        encoder: str = TINY_ENCODER,
        encoder_pretrained: str | None = None,
        llm: str = TINY_LM,
        trust_remote_code: bool = False,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        samples_per_epoch: int | None = None,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        instruction: str = VQA_INSTRUCTION,
        max_question_tokens: int = 64,
        image_first: bool = True,
        sample_task: SampleTaskConfig | None = None,
        cache_dir: str = DEFAULT_CACHE,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        if num_workers < 0:
            raise ValueError(f"num_workers={num_workers} must be >= 0")
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch={samples_per_epoch} must be >= 1")
        if isinstance(sample_task, dict):  # as stored in checkpoints (load_from_checkpoint passes it back)
            sample_task = SampleTaskConfig(**sample_task)
        self.save_hyperparameters(ignore=["sample_task"])
        # Plain values in checkpoints: a pickled dataclass would stop `torch.load(weights_only=True)`.
        self.hparams["sample_task"] = None if sample_task is None else {
            f.name: getattr(sample_task, f.name) for f in fields(sample_task) if f.init}
        self.specs = {"train": train, "val": val, "test": test}
        self.sample_task = sample_task
        self.cache_dir = Path(os.path.expanduser(cache_dir))
        if sample_task is not None:
            for split in ("train", "val"):
                if self.specs[split] is None:
                    self.specs[split] = str(self.cache_dir / split)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.sources: dict[str, list[Source]] = {}
        self.skip_tables: dict[str, StatsTable] = {"train": {}, "eval": {}}  # filled by the loaders
        self._epochs = 0
        self._resume: dict[str, int] | None = None
        self.feature_caches: dict[str, FeatureStamp] = {}  # directory -> stamp, for sources that are caches

    # ------------------------------------------------------------------ set-up
    def prepare_data(self) -> None:
        """Generate the sample task if it is configured and the cache is missing or stale."""
        if self.sample_task is None:
            return
        cfg = self.sample_task
        stamp = self.cache_dir / "config.json"
        current = stamp.is_file() and json.loads(stamp.read_text()) == cfg.stamp()
        if current and all(read_manifest(self.cache_dir / s) for s in ("train", "val")):
            return
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.cache_dir / ".lock")):  # nodes sharing a home directory take turns
            current = stamp.is_file() and json.loads(stamp.read_text()) == cfg.stamp()
            if current and all(read_manifest(self.cache_dir / s) for s in ("train", "val")):
                return
            log.info("generating the sample task into %s", self.cache_dir)
            stamp.unlink(missing_ok=True)
            for split, count in (("train", cfg.train), ("val", cfg.val)):
                write_split(self.cache_dir / split, split, count, cfg)
            write_text(stamp, json.dumps(cfg.stamp()))  # atomically: a half-written stamp would not parse

    def setup(self, stage: str | None = None) -> None:
        """Resolve sources (a missing path fails here, before training), build preprocessing."""
        for split, spec in self.specs.items():
            if spec is not None and split not in self.sources:
                specs = [spec] if isinstance(spec, (str, dict, SourceConfig)) else list(spec)
                self.sources[split] = [resolve(s) for s in specs]
        hp = self.hparams
        self.transform = build_transform(hp.encoder, hp.encoder_pretrained)
        self._check_feature_caches()
        self.tokenizer = build_tokenizer(hp.llm, trust_remote_code=hp.trust_remote_code)
        self.prompt = VQAPromptBuilder(self.tokenizer, hp.instruction, hp.max_question_tokens, hp.image_first)
        self.image_size = transform_size(hp.encoder, hp.encoder_pretrained)  # (H, W)

    def _check_feature_caches(self) -> None:
        """Every source that is a feature cache (``arrcoc data cache-features``) must come from this run's
        encoder, pretrained weights and image transform; ``feature_caches`` maps each one to its stamp (the
        training phase checks the encoder layer against the model's, which the data module does not know)."""
        expected = {"encoder": self.hparams.encoder, "pretrained": self.hparams.encoder_pretrained,
                    "transform": repr(self.transform)}
        for split, sources in self.sources.items():
            for src in sources:
                for directory in sorted({os.path.dirname(os.path.abspath(u)) for u in src.urls}):
                    if is_cache(directory) and directory not in self.feature_caches:
                        self.feature_caches[directory] = check_stamp(directory, expected)
                        log.info("%s: feature cache %s (%s, layer %d, %s)", split, directory,
                                 self.hparams.encoder, self.feature_caches[directory].layer,
                                 self.feature_caches[directory].dtype)

    @property
    def rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    @property
    def world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    def _collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return collate_vqa(samples, self.tokenizer.pad_token_id)

    # ------------------------------------------------------------------ loaders
    def train_stream(self) -> TrainStream:
        sources = self._need("train")
        total = self.hparams.samples_per_epoch
        if total is None:
            if any(s.total is None for s in sources):
                raise ValueError("samples_per_epoch must be set for training sources without a manifest.json")
            total = sum(s.total for s in sources)
        per_rank = total // (self.world_size * self.batch_size)
        if per_rank < 1:
            raise ValueError(f"samples_per_epoch={total} gives no full batch of {self.batch_size} per rank "
                             f"on {self.world_size} rank(s)")
        return TrainStream(sources, self._preprocessor(train=True), self._collate, self.batch_size, per_rank,
                           self.rank, self.world_size, self.hparams.shuffle_buffer, self.hparams.seed)

    def eval_stream(self, split: str) -> EvalStream:
        pre = self._preprocessor(train=False)
        sources = [count_samples(s) for s in self._need(split)]
        pre.calibrate(first_sample(sources))
        return EvalStream(sources, pre, pre.placeholder, self._collate, self.eval_batch_size,
                          self.rank, self.world_size, num_workers=self.num_workers)

    def _preprocessor(self, train: bool) -> VQAPreprocessor:
        # the crop geometry maps samples' object boxes the way the transform maps their images
        return VQAPreprocessor(self.transform, self.prompt, train=train, image_size=self.image_size,
                               crop=crop_geometry(self.hparams.encoder, self.hparams.encoder_pretrained))

    def _need(self, split: str) -> list[Source]:
        if split not in self.sources:
            raise ValueError(f"data.{split} is not set: give shard paths (or sample_task for train/val)")
        return self.sources[split]

    def _loader(self, stream: IterableDataset, table: str, epoch_fn, skip_fn=None) -> EpochDataLoader:
        return EpochDataLoader(stream, epoch_fn, skip_fn, stats=self.skip_tables[table], num_workers=self.num_workers,
                               persistent_workers=False, pin_memory=False)

    def _epoch(self) -> int:
        """The epoch a new training pass belongs to. From the fit loop's count of finished epochs
        (right after a resume, ``current_epoch`` still names the epoch that was interrupted)."""
        if self.trainer is not None:
            return int(self.trainer.fit_loop.epoch_progress.current.processed)
        self._epochs += 1
        return self._epochs - 1

    def train_dataloader(self) -> EpochDataLoader:
        return self._loader(self.train_stream(), "train", self._epoch, self._skip)

    def _skip(self, epoch: int) -> int:
        """Batches to replay-and-drop: those of the resumed epoch that were trained before the checkpoint."""
        resume, self._resume = self._resume, None
        return resume["batches"] if resume is not None and resume["epoch"] == epoch else 0

    def state_dict(self) -> dict[str, Any]:
        """Where training stands in the data: saved in checkpoints so a mid-epoch resume continues the
        epoch's order instead of restarting it."""
        if self.trainer is None or not self.trainer.training:
            return {}
        loop = self.trainer.fit_loop
        # The epoch the trained batches belong to ("started", not "processed": a checkpoint written at
        # an epoch's end already counts that epoch as processed).
        return {"epoch": int(loop.epoch_progress.current.started) - 1,
                "batches": int(loop.epoch_loop.batch_progress.current.processed)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume = dict(state) if state else None

    def val_dataloader(self) -> EpochDataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> EpochDataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> EpochDataLoader:
        """``predict`` reads the test split, or the validation split where no test split is set."""
        return self._eval_loader("test" if self.specs.get("test") is not None else "val")

    def _eval_loader(self, split: str) -> EpochDataLoader:
        return self._loader(self.eval_stream(split), "eval", lambda: 0)

    # ------------------------------------------------------------------ bookkeeping
    def on_before_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        """The loader has recorded the batch's ``data_stats``; the step does not get it."""
        batch.pop("data_stats", None)
        return batch

    @property
    def skipped(self) -> int:
        """Training samples skipped so far on this rank (all workers)."""
        return total_skipped(self.skip_tables["train"])

    @property
    def skipped_eval(self) -> int:
        return total_skipped(self.skip_tables["eval"])

    def skipped_by_reason(self) -> dict[str, int]:
        """Skipped samples per reason, training and evaluation, on this rank."""
        return skipped_by_reason(*self.skip_tables.values())

    def eval_skips(self) -> dict[str, int]:
        """Samples the last evaluation could not evaluate, per reason, on this rank."""
        return skipped_by_reason(self.skip_tables["eval"])

    def source_names(self, split: str) -> list[str]:
        """The sources of ``split`` as configured (for messages)."""
        return [s.name for s in self.sources.get(split, [])]
