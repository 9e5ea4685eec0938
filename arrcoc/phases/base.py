"""The shared base of the training phases: one LightningModule per phase, each a small subclass.

A phase (subclass of :class:`PhaseModule`) declares:

* ``trainable``: the model components (names from ``ARRCOCModel.components()``) that learn; the
  rest are frozen at construction, so DDP and DeepSpeed only ever see the trainable set.
* ``full_tokens``: whether the phase runs with allocation off (all patches).
* ``default_lr``: learning rate per trainable component (overridable with ``lr``).
* ``compute_losses(inputs, out)``: a dict with ``loss`` (what is optimised) and any parts to log.
* optionally ``forward_kwargs(inputs)``: extra arguments of a training step's forward pass.

The base owns freezing, the optimizer groups and the learning-rate schedule, the evaluation steps and
their metrics, and wires in the units beside it: ``init_from`` (:mod:`~arrcoc.phases.weights`), the
non-finite-loss guard (:mod:`~arrcoc.phases.guard`), the throughput meter
(:mod:`~arrcoc.phases.throughput`) and the budget-histogram writer (:mod:`~arrcoc.phases.evaluation`).
"""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar

import lightning as L
import torch
from torch import Tensor
from torchmetrics import MaxMetric, MeanMetric, MinMetric, SumMetric

from arrcoc.data.collate import model_inputs
from arrcoc.metrics import BudgetHistogram, ExactMatch, VQAAccuracy
from arrcoc.model import ARRCOCModel, ARRCOCOutput, GenerationOutput
from arrcoc.phases.evaluation import write_budget_histogram
from arrcoc.phases.guard import NonFiniteGuard
from arrcoc.phases.throughput import Throughput
from arrcoc.phases.weights import load_weights
from arrcoc.phases.zero3 import transformers_zero3_config
from arrcoc.presets import TINY_LM

log = logging.getLogger("arrcoc.train")


class PhaseModule(L.LightningModule):
    """One training phase of an :class:`ARRCOCModel`.

    Args:
        model: the architecture (in YAML: ``ARRCOCModel``'s arguments under ``model``).
        init_from: weights of the previous phase (a Lightning checkpoint, or a state dict such as the
            consolidated DeepSpeed file). Says which components it loaded and which it left at init.
            To resume *this* phase use ``--ckpt_path`` instead.
        lr: learning rate per component, e.g. ``{projector: 1e-3, llm: 2e-5}``; components the phase
            trains and ``lr`` omits get the phase's default.
        weight_decay: AdamW weight decay on matrices (not on norms and biases).
        warmup_steps: linear warm-up, then cosine decay to ``min_lr_ratio`` of each group's rate.
        train_llm: whether the LLM learns where the phase allows it; default: only the tiny preset
            (a 2-layer decoder that has read text only, or starts random), never a real pretrained one.
        max_new_tokens: answer length for greedy decoding in validation, test and predict.
        eval_full_tokens: in validation and test, also answer with all patches (the baseline).
        max_nan_steps: consecutive non-finite losses tolerated (each step skipped on every rank);
            one more saves a checkpoint and stops the run (see :class:`~arrcoc.phases.guard.NonFiniteGuard`).
        full_tokens: allocation off (every patch) or on; default: the phase's own (on, but for alignment).
            With allocation off the allocation modules do not train: a phase run this way is the full-token
            reference of the allocated one.
    """

    trainable: ClassVar[tuple[str, ...]] = ()
    full_tokens: ClassVar[bool] = False
    default_lr: ClassVar[dict[str, float]] = {}
    #: default rate of a real pretrained LLM where a phase trains it (the tiny preset's LLM is small
    #: and uses ``default_lr``); ``lr: {llm: ...}`` overrides it.
    pretrained_llm_lr: ClassVar[float] = 2e-5

    def __init__(
        self,
        model: ARRCOCModel,
        init_from: str | None = None,
        lr: dict[str, float] | None = None,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.1,
        train_llm: bool | None = None,
        max_new_tokens: int = 8,
        eval_full_tokens: bool = False,
        max_nan_steps: int = 10,
        full_tokens: bool | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        unknown = set(lr or {}) - set(model.components())
        if unknown:
            raise ValueError(f"lr has unknown components {sorted(unknown)}; valid: {sorted(model.components())}")
        self.train_llm = (model.llm.name == TINY_LM) if train_llm is None else train_llm
        if full_tokens is not None:
            self.full_tokens = full_tokens  # this run's setting shadows the phase's default
        self.model.full_tokens = self.full_tokens
        self.load_report: dict[str, str] | None = None
        self._zero3_config: Any = None  # transformers' ZeRO-3 switch, alive while the run is (see configure_model)
        if model.built:  # else configure_model builds the LLM, then loads init_from and freezes
            self._complete_model()
        self.val_acc, self.val_exact, self.val_acc_full = VQAAccuracy(), ExactMatch(), VQAAccuracy()
        # Updated only with valid samples, logged on every step by every rank: DDP reductions stay aligned.
        self.val_loss, self.val_tokens = MeanMetric(), MeanMetric()
        self.val_tokens_max, self.val_tokens_min = MaxMetric(), MinMetric()
        self.val_hist = BudgetHistogram(max_tokens=model.encoder.num_patches)
        self.val_samples = SumMetric()  # samples evaluated (valid ones), over all ranks
        self.nan_guard = NonFiniteGuard(max_in_a_row=max_nan_steps)
        self.throughput = Throughput()

    # ------------------------------------------------------------------ building
    def _complete_model(self) -> None:
        """What needs every weight: ``init_from``, then freezing (at construction, or after a deferred build)."""
        if self.hparams.init_from is not None:
            self.load_report = load_weights(self.model, self.hparams.init_from)
        self._freeze()

    def configure_model(self) -> None:
        """Build a deferred LLM (``llm.deferred: true``), then load ``init_from`` and freeze; nothing when the model
        was built at construction. Lightning calls this hook before fit, validate, test and predict; under
        DeepSpeed ZeRO-3 it runs inside ``deepspeed.zero.Init``, and transformers is told so (``HfDeepSpeedConfig``)
        so that ``from_pretrained`` splits each weight as it loads it: no rank holds the whole LLM."""
        if self.model.built:
            return
        strategy = self._trainer.strategy if self._trainer is not None else None
        self._zero3_config = transformers_zero3_config(strategy)
        self.model.build()
        self._complete_model()

    # ------------------------------------------------------------------ what learns
    def trainable_components(self) -> list[str]:
        idle = {"scorers", "balancer", "allocator", "summary"} if self.full_tokens else set()  # allocation off
        return [c for c in self.trainable
                if c in self.model.components() and (c != "llm" or self.train_llm) and c not in idle]

    def _freeze(self) -> None:
        train = set(self.trainable_components())
        for name, module in self.model.components().items():
            module.requires_grad_(name in train)

    def param_groups(self) -> list[dict[str, Any]]:
        """One AdamW group per trainable component (two where weight decay splits it); extra groups
        registered by callbacks (``self.extra_param_groups``) are appended."""
        defaults = dict(self.default_lr)
        if "llm" in defaults and self.model.llm.name != TINY_LM:
            defaults["llm"] = self.pretrained_llm_lr
        lrs = {**defaults, **(self.hparams.lr or {})}
        groups = []
        for name in self.trainable_components():
            params = [p for p in self.model.components()[name].parameters() if p.requires_grad]
            decay = [p for p in params if p.ndim >= 2]
            no_decay = [p for p in params if p.ndim < 2]
            base = lrs.get(name, 1e-4)
            for ps, wd in ((decay, self.hparams.weight_decay), (no_decay, 0.0)):
                if ps:
                    groups.append({"params": ps, "name": name, "base_lr": base, "lr": base, "scale": 1.0,
                                   "weight_decay": wd})
        groups += getattr(self, "extra_param_groups", [])
        return groups

    def configure_optimizers(self):
        groups = self.param_groups()
        if not groups:
            raise ValueError(f"{type(self).__name__}: nothing to train (trainable: {self.trainable})")
        return torch.optim.AdamW(groups, betas=(0.9, 0.98))

    def lr_factor(self, step: int) -> float:
        """Warm-up then cosine decay, as a factor of each group's base rate."""
        warm = self.hparams.warmup_steps
        if step < warm:
            return (step + 1) / warm
        total = max(int(self.trainer.estimated_stepping_batches), warm + 1)
        progress = min((step - warm) / max(total - warm, 1), 1.0)
        floor = self.hparams.min_lr_ratio
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if isinstance(batch, dict) and batch.get("patch_features") is not None and not self.model.encoder.frozen:
            trainable = [n for n, p in self.model.encoder.named_parameters() if p.requires_grad]
            raise ValueError(
                f"the training data are cached encoder features (a feature cache), but the encoder trains "
                f"({len(trainable)} parameters, e.g. {trainable[0]!r}): the cached features would be stale and the "
                "encoder would get no gradient. Train from images (point data.train at image shards) or keep the "
                "encoder frozen (the EncoderFreezing callback's schedule: [])")
        factor = self.lr_factor(self.global_step)
        for opt in self.trainer.optimizers:
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * group.get("scale", 1.0) * factor

    def on_fit_start(self) -> None:
        self.check_feature_caches(getattr(self.trainer, "datamodule", None))
        self.nan_guard.on_fit_start()  # nothing carried over from an earlier, interrupted fit
        self.throughput.reset()

    def check_feature_caches(self, datamodule: Any) -> None:
        """The data module checked its feature caches' encoder, weights and transform; the layer and the
        feature shape are the model's to check (a cache of another block's output has the same shape)."""
        enc = self.model.encoder
        for directory, stamp in (getattr(datamodule, "feature_caches", None) or {}).items():
            have = {"layer": stamp.layer, "patches": stamp.patches, "width": stamp.width}
            want = {"layer": enc.layer, "patches": enc.num_patches, "width": enc.width}
            if have != want:
                wrong = ", ".join(f"{k}={have[k]} (this model: {want[k]})" for k in have if have[k] != want[k])
                raise ValueError(f"feature cache {directory} does not fit this model's encoder: {wrong}. Remake it "
                                 "with `arrcoc data cache-features --config <this run's config>`")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["arrcoc"] = {"phase": type(self).__name__, "trainable": self.trainable_components()}
        self.throughput.reset()  # writing the checkpoint is not training time

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resume (``--ckpt_path``): refuse another phase's checkpoint by name (without DeepSpeed this comes
        before the optimizer state meets this phase's parameter groups; DeepSpeed's engine has loaded both by
        then, but the run stops here all the same)."""
        saved = checkpoint.get("arrcoc")
        mine = {"phase": type(self).__name__, "trainable": self.trainable_components()}
        if saved is not None and saved != mine:
            path = getattr(self._trainer, "ckpt_path", None) if self._trainer is not None else None
            raise ValueError(
                f"--ckpt_path {path!r} is a checkpoint of {saved['phase']} training {saved['trainable']}; this run is "
                f"{mine['phase']} training {mine['trainable']}. --ckpt_path resumes the same phase; to start this "
                "phase from another phase's weights, give it as model.init_args.init_from")

    # ------------------------------------------------------------------ losses
    def compute_losses(self, inputs: dict[str, Any], out: ARRCOCOutput) -> dict[str, Tensor]:
        losses = {"loss": out.loss, "lm_loss": out.lm_loss}
        if not self.model.full_tokens:
            losses["budget_loss"] = out.budget_loss
        return losses

    def forward_kwargs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Extra arguments of this training step's forward pass (a budget, a selection); none by default."""
        return {}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        inputs = model_inputs(batch)
        out = self.model(**inputs, **self.forward_kwargs(inputs), return_logits=False)
        losses = self.compute_losses(inputs, out)
        loss = losses["loss"]
        skip = self.nan_guard.check(self, loss)
        if skip is not None:
            return skip  # a zero that back-propagates exact zeros; the optimizer step then drops them
        n = len(batch["input_ids"])
        vt = out.allocation.visual_tokens.float()  # (n,)
        for k, v in losses.items():  # the bar shows the loss, the visual tokens and samples/s
            self.log(f"train/{k}", v.detach(), prog_bar=k == "loss", batch_size=n)
        self.log("train/visual_tokens", vt.mean(), prog_bar=True, batch_size=n)
        for name, rate in self.throughput.step(n, vt, self.trainer.world_size).items():
            self.log(name, rate, batch_size=n, prog_bar=name == "perf/samples_per_s")
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.nan_guard.before_optimizer_step(optimizer, self.trainer.strategy)

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, batch: dict[str, Any], prefix: str) -> GenerationOutput:
        """Update and log the evaluation metrics for one batch; returns the answers and allocations (what callbacks
        such as ``AllocationFigures`` draw, so none of them runs the model again)."""
        inputs = model_inputs(batch)
        n, valid = len(batch["input_ids"]), batch["valid"]
        out = self.model(**inputs, return_logits=False)
        n_valid = int(valid.sum())
        self.val_samples.update(n_valid)
        if out.loss is not None and n_valid:
            self.val_loss.update(out.lm_loss.detach(), weight=n_valid)
        # Answering sees the same images: reuse the encoder features instead of encoding them again.
        inputs = {**inputs, "patch_features": out.patch_features, "cls_features": out.cls_features}
        gen = self.model.generate(**inputs, max_new_tokens=self.hparams.max_new_tokens)
        self.val_acc.update(gen.texts, batch["answers"], valid)
        self.val_exact.update(gen.texts, batch["answers"], valid)
        vt = gen.allocation.visual_tokens.float()
        self.val_hist.update(gen.allocation.budget, valid)
        if n_valid:
            self.val_tokens.update(vt[valid])
            self.val_tokens_max.update(vt[valid])
            self.val_tokens_min.update(vt[valid])
        self.log(f"{prefix}/loss", self.val_loss, batch_size=n)
        self.log(f"{prefix}/visual_tokens", self.val_tokens, batch_size=n)
        self.log(f"{prefix}/visual_tokens_max", self.val_tokens_max, batch_size=n)
        self.log(f"{prefix}/visual_tokens_min", self.val_tokens_min, batch_size=n)
        self.log(f"{prefix}/acc", self.val_acc, batch_size=n, prog_bar=True)
        self.log(f"{prefix}/exact_match", self.val_exact, batch_size=n)
        if self.hparams.eval_full_tokens and not self.full_tokens:
            full = self.model.generate(**inputs, full_tokens=True, max_new_tokens=self.hparams.max_new_tokens)
            self.val_acc_full.update(full.texts, batch["answers"], valid)
            self.log(f"{prefix}/acc_full_tokens", self.val_acc_full, batch_size=n)
        return gen

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> GenerationOutput:
        return self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> GenerationOutput:
        return self._evaluate(batch, "test")

    def on_validation_start(self) -> None:
        self.throughput.reset()  # the next training step's rate must not include validation time

    def on_validation_epoch_end(self) -> None:
        self._write_histogram("val")
        self._report_evaluated("val")

    def on_test_epoch_end(self) -> None:
        self._write_histogram("test")
        self._report_evaluated("test")

    def _report_evaluated(self, prefix: str) -> None:
        """Say how many samples the evaluation evaluated and how many it could not, per reason (over all ranks);
        fail, naming the source, when it evaluated none (an accuracy of 0.0 would hide a broken source)."""
        evaluated = int(self.val_samples.compute())  # every rank takes part
        self.val_samples.reset()
        dm = self.trainer.datamodule
        local = dict(dm.eval_skips()) if hasattr(dm, "eval_skips") else {}
        skipped: dict[str, int] = {}
        for counts in _gather_objects(local, self.trainer.world_size):
            for reason, n in counts.items():
                skipped[reason] = skipped.get(reason, 0) + n
        if self.trainer.sanity_checking:
            return
        not_done = ", ".join(f"{r}: {n}" for r, n in sorted(skipped.items())) or "none"
        if evaluated == 0:
            names = dm.source_names(prefix) if hasattr(dm, "source_names") else []
            raise RuntimeError(f"{prefix}: no sample of {names or 'the evaluation data'} could be evaluated (not "
                               f"evaluated, by reason: {not_done}); check the source")
        if self.trainer.is_global_zero:
            log.info("%s: evaluated %d samples; not evaluated: %s", prefix, evaluated, not_done)

    def _write_histogram(self, prefix: str) -> None:
        """Write the evaluation's budget histogram (see :func:`~arrcoc.phases.evaluation.write_budget_histogram`)
        and reset it; the sanity check before training is not an evaluation and writes nothing."""
        counts = self.val_hist.compute()  # (bins,) summed over ranks: every rank takes part
        if not self.trainer.sanity_checking:
            log_dir = self.trainer.log_dir or self.trainer.default_root_dir  # a broadcast: every rank asks
            if self.trainer.is_global_zero:
                write_budget_histogram(log_dir, prefix, self.global_step, self.val_hist.edges(), counts)
        self.val_hist.reset()

    def on_predict_start(self) -> None:
        from lightning.pytorch.callbacks import BasePredictionWriter

        if not any(isinstance(cb, BasePredictionWriter) for cb in self.trainer.callbacks):
            log.warning("predict: no prediction writer among the callbacks, so nothing is written to disk; add "
                        "arrcoc.callbacks.PredictionWriter (the phase configs have it)")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        gen = self.model.generate(**model_inputs(batch), max_new_tokens=self.hparams.max_new_tokens)
        vt = gen.allocation.visual_tokens
        return [{"question_id": batch["question_id"][i], "question": batch["question"][i],
                 "prediction": gen.texts[i], "budget": int(gen.allocation.budget[i]),
                 "visual_tokens": int(vt[i])}
                for i in range(len(gen.texts)) if bool(batch["valid"][i])]



def _gather_objects(obj: Any, world_size: int) -> list[Any]:
    """``obj`` from every rank (``[obj]`` outside distributed runs)."""
    if world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        out: list[Any] = [None] * world_size
        torch.distributed.all_gather_object(out, obj)
        return out
    return [obj]
