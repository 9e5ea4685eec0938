"""The non-finite-loss guard (arrcoc.phases.guard) as a unit: counting, reset, rank agreement, the stop with
a checkpoint, dropped gradients, and the zero loss. Under real training: test_callbacks.py (one process)
and test_ddp_nan.py (two)."""

import types

import pytest
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy
from torch import nn

from arrcoc.data.collate import model_inputs
from arrcoc.model import ARRCOCModel
from arrcoc.phases import RelevancePhase
from arrcoc.phases.guard import NonFiniteGuard, zero_loss
from conftest import make_batch

NAN, ONE = torch.tensor(float("nan")), torch.tensor(1.0)


class FakePhase(nn.Module):
    """What the guard uses of a LightningModule: trainer, global_step, log, parameters."""

    def __init__(self, tmp_path, world_size=1, others_bad=False):
        super().__init__()
        self.used, self.frozen = nn.Linear(3, 2), nn.Linear(2, 2).requires_grad_(False)
        self.logged, self.saved, self.decisions = [], [], []

        def decide(bad, all):
            self.decisions.append((bad, all))
            return bad or others_bad

        strategy = types.SimpleNamespace(reduce_boolean_decision=decide)
        self.trainer = types.SimpleNamespace(world_size=world_size, strategy=strategy, should_stop=False,
                                             default_root_dir=str(tmp_path), save_checkpoint=self.saved.append)
        self.global_step = 0

    def log(self, name, value):
        self.logged.append((name, value))


def test_counts_in_a_row_and_in_all_and_a_finite_loss_resets_the_run(tmp_path):
    phase, guard = FakePhase(tmp_path), NonFiniteGuard(max_in_a_row=5)
    assert guard.check(phase, ONE) is None and not guard.skipping
    for expected in (1, 2):
        assert guard.check(phase, NAN) is not None and guard.skipping
        assert guard.in_a_row == expected
    assert guard.check(phase, torch.tensor(float("inf"))) is not None
    assert guard.check(phase, ONE) is None
    assert (guard.in_a_row, guard.total) == (0, 3)
    assert guard.check(phase, -torch.tensor(float("inf"))) is not None
    assert (guard.in_a_row, guard.total) == (1, 4)
    assert phase.logged[-2:] == [("train/skipped_nan_steps", 1.0), ("train/skipped_nan_total", 4.0)]
    assert [v for k, v in phase.logged if k == "train/skipped_nan_steps"] == [1.0, 2.0, 3.0, 1.0]
    assert not phase.saved and not phase.trainer.should_stop


def test_one_more_than_max_in_a_row_saves_a_checkpoint_and_stops(tmp_path):
    phase, guard = FakePhase(tmp_path), NonFiniteGuard(max_in_a_row=2)
    phase.global_step = 7
    guard.check(phase, NAN)
    guard.check(phase, NAN)
    assert not phase.saved
    with pytest.raises(RuntimeError, match=r"^3 non-finite losses in a row \(max_nan_steps=2\); stopped, checkpoint "
                                           r"saved to .*nan-stop-step7.ckpt$"):
        guard.check(phase, NAN)
    assert phase.saved == [tmp_path / "nan-stop-step7.ckpt"] and phase.trainer.should_stop


def test_max_in_a_row_zero_stops_at_the_first(tmp_path):
    phase = FakePhase(tmp_path)
    with pytest.raises(RuntimeError, match="1 non-finite losses in a row"):
        NonFiniteGuard(max_in_a_row=0).check(phase, NAN)


def test_every_rank_skips_when_any_rank_is_non_finite(tmp_path):
    """Ranks agree through the strategy (any rank bad: all skip), or DDP would hang."""
    alone = FakePhase(tmp_path)
    NonFiniteGuard(max_in_a_row=5).check(alone, NAN)
    assert alone.decisions == []  # one process: nothing to agree on
    phase, guard = FakePhase(tmp_path, world_size=2, others_bad=True), NonFiniteGuard(max_in_a_row=5)
    assert guard.check(phase, ONE) is not None  # this rank's loss is finite; another rank's was not
    assert phase.decisions == [(False, False)] and guard.in_a_row == 1
    healthy = FakePhase(tmp_path, world_size=2)
    assert NonFiniteGuard(max_in_a_row=5).check(healthy, ONE) is None
    assert healthy.decisions == [(False, False)]


def test_a_skipped_step_drops_every_gradient_once(tmp_path):
    phase, guard = FakePhase(tmp_path), NonFiniteGuard(max_in_a_row=5)
    opt = torch.optim.AdamW([p for p in phase.parameters() if p.requires_grad])
    strategy = types.SimpleNamespace()
    guard.check(phase, NAN).backward()
    assert all(p.grad is not None for p in phase.used.parameters())
    guard.before_optimizer_step(opt, strategy)
    assert all(p.grad is None for p in phase.parameters()) and not guard.skipping
    zero_loss(phase).backward()  # a normal step: its gradients stay
    guard.before_optimizer_step(opt, strategy)
    assert all(p.grad is not None for p in phase.used.parameters())


def test_deepspeed_keeps_the_zero_gradients(tmp_path):
    """DeepSpeed owns the gradients: the guard leaves them (zeros) and only clears its flag."""
    phase, guard = FakePhase(tmp_path), NonFiniteGuard(max_in_a_row=5)
    opt = torch.optim.AdamW(phase.used.parameters())
    guard.check(phase, NAN).backward()
    guard.before_optimizer_step(opt, DeepSpeedStrategy.__new__(DeepSpeedStrategy))  # isinstance is all it asks
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in phase.used.parameters()) and not guard.skipping


def test_on_fit_start_forgets_a_pending_skip(tmp_path):
    phase, guard = FakePhase(tmp_path), NonFiniteGuard(max_in_a_row=5)
    guard.check(phase, NAN)
    guard.on_fit_start()
    assert not guard.skipping and (guard.in_a_row, guard.total) == (1, 1)  # the counts are the run's


def test_zero_loss_reaches_only_trainable_weights(tmp_path):
    phase = FakePhase(tmp_path)
    loss = zero_loss(phase)
    assert loss.shape == () and float(loss.detach()) == 0.0
    loss.backward()
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in phase.used.parameters())
    assert all(p.grad is None for p in phase.frozen.parameters())


def test_zero_loss_gives_zero_gradients_where_a_nan_loss_times_zero_does_not():
    """What a DeepSpeed run back-propagates on a non-finite step."""
    torch.manual_seed(0)
    phase = RelevancePhase(ARRCOCModel())
    model = phase.model
    inputs = model_inputs(make_batch(model, n=2))
    with torch.no_grad():
        model.scorers[0].proj.weight[0, 0] = float("nan")  # NaN activations from a scorer
    out = model(**inputs, return_logits=False)
    assert not torch.isfinite(out.loss)
    (out.loss * 0.0).backward()
    assert not torch.isfinite(model.allocator.head[1].weight.grad).all()  # 0 * NaN poisons the gradients
    model.zero_grad(set_to_none=True)
    zero_loss(phase).backward()
    grads = [p.grad for p in phase.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.equal(g, torch.zeros_like(g)) for g in grads)
