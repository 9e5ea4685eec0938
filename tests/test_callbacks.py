"""Budget annealing, encoder freezing (its DDP test is in test_ddp_freezing.py), DeepSpeed sharding
config, and the non-finite-loss guard."""

import types

import lightning as L
import pytest
import torch

from arrcoc.callbacks import BudgetAnnealing, DeepSpeedSharding, EncoderFreezing, Unfreeze, deepspeed_strategy
from arrcoc.callbacks.freezing import parameter_table
from arrcoc.model import ARRCOCModel
from arrcoc.phases import AlignPhase, FinetunePhase, RelevancePhase
from arrcoc.phases.guard import zero_loss


def test_budget_annealing_schedule_and_state():
    lin = BudgetAnnealing(start=576, end=198, steps=100, mode="linear", start_max=576, end_max=400)
    assert lin.values(0) == {"target": 576, "min": None, "max": 576}
    assert lin.values(50)["target"] == pytest.approx(387) and lin.values(50)["max"] == pytest.approx(488)
    assert lin.values(500)["target"] == 198
    cos = BudgetAnnealing(start=576, end=198, steps=100)
    assert cos.values(25)["target"] > lin.values(25)["target"]  # cosine starts slowly
    cos.step = 40
    fresh = BudgetAnnealing(start=576, end=198, steps=100)
    fresh.load_state_dict(cos.state_dict())
    assert fresh.step == 40
    with pytest.raises(ValueError, match="mode='step'"):
        BudgetAnnealing(mode="step")


def test_budget_annealing_moves_the_allocator():
    model = ARRCOCModel()
    ann = BudgetAnnealing(start=576, end=198, steps=10, start_max=576, end_max=400, mode="linear")
    module = types.SimpleNamespace(model=model)
    assert ann._apply(module) == {"target": 576, "min": 64, "max": 576}
    assert model.allocator.bounds.tolist() == [64, 576]
    ann.step = 10
    ann._apply(module)
    assert model.allocator.bounds.tolist() == [64, 400] and model.allocator.target_tokens == 198


def test_freezing_validation_and_table():
    with pytest.raises(ValueError, match="unit='batch'"):
        EncoderFreezing(unit="batch")
    phase = AlignPhase(ARRCOCModel())
    table = parameter_table(phase)
    assert table.splitlines()[0].split() == ["component", "trainable", "total"]
    rows = {r.split()[0]: r.split()[1:] for r in table.splitlines()[1:]}
    assert rows["encoder"][0] == "0" and rows["projector"][0] == rows["projector"][1]
    assert rows["scorers"][0] == "0"  # phase 1 trains no allocation parameter


def test_freezing_says_when_scheduled_blocks_start(caplog):
    cb = EncoderFreezing([Unfreeze(at=100, blocks=1, lr_scale=0.1)], lr=1e-4)
    trainer = types.SimpleNamespace(optimizers=[], is_global_zero=True)
    with caplog.at_level("INFO", logger="arrcoc"):
        cb.on_fit_start(trainer, AlignPhase(ARRCOCModel()))
    assert "trainable parameters at fit start" in caplog.text
    assert "top 1 block(s) train from step 100 at lr 1e-05" in caplog.text


def test_freezing_refuses_schedules_under_deepspeed():
    pytest.importorskip("deepspeed", reason="needs the deepspeed package (the dev extra installs it)")
    trainer = types.SimpleNamespace(strategy=deepspeed_strategy())
    phase = AlignPhase(ARRCOCModel())
    cb = EncoderFreezing([Unfreeze(at=100, blocks=1)])
    with pytest.raises(ValueError, match="DeepSpeed fixes the trainable parameters"):
        cb.setup(trainer, phase, "fit")
    EncoderFreezing([Unfreeze(at=0, blocks=1)]).setup(trainer, phase, "fit")  # a phase-boundary change is fine
    assert all(p.requires_grad for p in phase.model.encoder.blocks()[-1].parameters())


def test_deepspeed_config_construction():
    pytest.importorskip("deepspeed", reason="needs the deepspeed package (the dev extra installs it)")
    strategy = deepspeed_strategy(stage=2, batch_size=16)
    assert strategy.exclude_frozen_parameters
    assert strategy.config["zero_optimization"]["stage"] == 2
    assert strategy.config["train_micro_batch_size_per_gpu"] == 16


def test_deepspeed_sharding_resumes_without_frozen_weights():
    pytest.importorskip("deepspeed", reason="needs the deepspeed package (the dev extra installs it)")
    phase = RelevancePhase(ARRCOCModel())
    assert phase.strict_loading
    trainer = types.SimpleNamespace(strategy=deepspeed_strategy(stage=2))
    DeepSpeedSharding().setup(trainer, phase, "fit")
    # the ZeRO checkpoints lack the frozen weights: a strict module load on --ckpt_path would refuse them
    assert not phase.strict_loading and trainer.strategy.exclude_frozen_parameters


def test_deepspeed_sharding_reports_after_the_first_optimizer_step(caplog):
    pytest.importorskip("deepspeed", reason="needs the deepspeed package (the dev extra installs it)")
    phase = RelevancePhase(ARRCOCModel())
    opt = phase.configure_optimizers()
    trainer = types.SimpleNamespace(strategy=deepspeed_strategy(stage=2), optimizers=[opt], global_step=0,
                                    global_rank=0)
    cb = DeepSpeedSharding()
    cb.setup(trainer, phase, "fit")
    with caplog.at_level("INFO", logger="arrcoc"):
        cb.on_train_batch_end(trainer, phase)  # a micro-batch before any optimizer step: nothing yet
        assert "optimizer state" not in caplog.text
        zero_loss(phase).backward()
        opt.step()  # AdamW's moments now exist: two fp32 tensors per trainable weight
        trainer.global_step = 1
        cb.on_train_batch_end(trainer, phase)
        cb.on_train_batch_end(trainer, phase)  # once
    trainable = sum(p.numel() * 4 for p in phase.parameters() if p.requires_grad) / 2**20
    lines = [r.getMessage() for r in caplog.records if "optimizer state" in r.getMessage()]
    assert len(lines) == 1 and f"rank 0 holds {trainable:.1f} MiB of trainable parameters" in lines[0]
    assert f"{2 * trainable:.1f} MiB of optimizer state (ZeRO stage 2)" in lines[0]


def test_consolidated_weights_get_the_frozen_ones_back(tmp_path):
    """What a ZeRO checkpoint holds (the trainable weights), plus frozen_state, is the whole model: the next
    phase loads every component from it, not just the ones phase 2 trained."""
    from arrcoc.callbacks.deepspeed import add_frozen, frozen_state

    torch.manual_seed(0)
    phase2 = RelevancePhase(ARRCOCModel())
    trained = {k: p.detach().clone() for k, p in phase2.named_parameters() if p.requires_grad}
    frozen = frozen_state(phase2)
    assert not set(trained) & set(frozen) and any(k.startswith("model.projector.") for k in frozen)
    assert frozen_state(phase2, keep=False) == {}  # the other ranks join the gathers and keep nothing
    state, added = add_frozen(trained, frozen)
    assert added == len(frozen) and set(state) == set(phase2.state_dict())
    torch.save({"state_dict": state}, tmp_path / "consolidated.pt")
    phase3 = FinetunePhase(ARRCOCModel(), init_from=str(tmp_path / "consolidated.pt"))
    assert set(phase3.load_report.values()) == {"loaded"}
    assert torch.equal(phase3.model.projector[0].weight, phase2.model.projector[0].weight)
    # a tensor in both keeps the consolidated (trained) one
    key = next(iter(trained))
    assert add_frozen({key: trained[key] + 1}, {key: trained[key]})[0][key].equal(trained[key] + 1)


def test_non_finite_loss_under_zero3_is_a_clear_error(tmp_path):
    pytest.importorskip("deepspeed", reason="needs the deepspeed package (the dev extra installs it)")
    from arrcoc.data.collate import collate_vqa
    from conftest import make_samples

    phase = AlignPhase(ARRCOCModel())
    phase._trainer = types.SimpleNamespace(strategy=deepspeed_strategy(stage=3), world_size=1, global_step=0)
    with torch.no_grad():
        phase.model.projector[0].weight[0, 0] = float("nan")
    batch = collate_vqa(make_samples(phase.model, [("Is there a red circle?", "yes")], [0]),
                        phase.model.tokenizer.pad_token_id)
    with pytest.raises(RuntimeError, match=r"non-finite loss at step 0 under DeepSpeed ZeRO-3.*Use ZeRO-2"):
        phase.training_step(batch, 0)


def test_deepspeed_sharding_is_a_no_op_without_deepspeed(caplog):
    cb = DeepSpeedSharding()
    trainer = types.SimpleNamespace(strategy=types.SimpleNamespace())
    with caplog.at_level("INFO", logger="arrcoc"):
        cb.setup(trainer, None, "fit")
        cb.on_fit_end(trainer, None)
    assert not cb.active and "not DeepSpeed; nothing to do" in caplog.text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: Lightning's DeepSpeed strategy requires it")
@pytest.mark.parametrize("stage", [2, 3])
def test_real_zero_run_consolidates_for_init_from(tmp_path, stage):  # pragma: no cover - GPU machines only
    from arrcoc.data.datamodule import VQADataModule
    from arrcoc.data.sample_task import SampleTaskConfig

    dm = VQADataModule(sample_task=SampleTaskConfig(train=64, val=16), cache_dir=str(tmp_path / "c"),
                       batch_size=8, samples_per_epoch=64, num_workers=0)
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
    trainer = L.Trainer(accelerator="gpu", devices=1, strategy=deepspeed_strategy(stage=stage, batch_size=8),
                        max_steps=2, precision="bf16-mixed", callbacks=[ckpt, DeepSpeedSharding()], logger=False,
                        limit_val_batches=0)
    trainer.fit(RelevancePhase(ARRCOCModel()), datamodule=dm)
    phase = RelevancePhase(ARRCOCModel(), init_from=str(tmp_path / "ck" / "consolidated.pt"))
    assert phase.load_report["scorers"] == "loaded"
    if stage == 3:  # the frozen weights are added back at consolidation: the whole model loads
        assert set(phase.load_report.values()) == {"loaded"}



def test_non_finite_losses_are_skipped_then_stop_the_run(tmp_path):
    from arrcoc.data.datamodule import VQADataModule
    from arrcoc.data.sample_task import SampleTaskConfig

    dm = VQADataModule(sample_task=SampleTaskConfig(train=64, val=8), cache_dir=str(tmp_path / "c"), batch_size=8,
                       samples_per_epoch=64, num_workers=0, shuffle_buffer=1)
    phase = AlignPhase(ARRCOCModel(), max_nan_steps=2)
    real = phase.model.forward
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        out = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] in (2, 4, 5, 6, 7):  # one NaN step, later several in a row
            out.loss = out.loss * float("nan")
        return out

    phase.model.forward = flaky
    trainer = L.Trainer(max_steps=20, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=str(tmp_path), gradient_clip_val=1.0)  # clipping as the configs do
    with pytest.raises(RuntimeError, match="3 non-finite losses in a row"):
        trainer.fit(phase, datamodule=dm)
    # only steps 1 and 3 updated the weights: the optimizer saw no gradient on the NaN steps
    weight = phase.model.projector[0].weight
    assert int(trainer.optimizers[0].state[weight]["step"]) == 2
    assert list(tmp_path.glob("nan-stop-step*.ckpt"))
    assert all(torch.isfinite(p).all() for p in phase.parameters())


def test_pretrained_llm_trains_only_in_phase_3_and_at_a_low_rate(tmp_path):
    from arrcoc.language_model import LanguageModel
    from arrcoc.phases import FinetunePhase

    src = LanguageModel()
    src.model.save_pretrained(tmp_path)
    src.tokenizer.save_pretrained(tmp_path)
    align = AlignPhase(ARRCOCModel(llm=LanguageModel(str(tmp_path))))
    assert "llm" not in align.trainable_components()
    assert not any(p.requires_grad for p in align.model.llm.parameters())
    fine = FinetunePhase(ARRCOCModel(llm=LanguageModel(str(tmp_path))))
    lrs = {g["name"]: g["base_lr"] for g in fine.param_groups()}
    assert lrs["llm"] == FinetunePhase.pretrained_llm_lr == 2e-5 and lrs["projector"] == 5e-4
    tiny = FinetunePhase(ARRCOCModel())
    assert {g["name"]: g["base_lr"] for g in tiny.param_groups()}["llm"] == 5e-4
