"""LoRA adapters on the LLM (``llm.lora``, arrcoc.language_model): only the adapters train, through the whole model; the
weights round-trip through state dicts, init_from (from a checkpoint without LoRA too), the consolidated DeepSpeed
file and a resumed run (which must not unfreeze the base); merging gives the same logits."""

import importlib.util
import sys

import lightning as L
import pytest
import torch
import yaml

from arrcoc.callbacks import EncoderFreezing
from arrcoc.callbacks.deepspeed import add_frozen, frozen_state
from arrcoc.callbacks.freezing import parameter_table
from arrcoc.data.collate import collate_vqa, model_inputs
from arrcoc.language_model import LanguageModel, LoraSpec, is_adapter_key, plain_key
from arrcoc.model import ARRCOCModel
from arrcoc.phases import FinetunePhase, RelevancePhase
from arrcoc.phases.weights import load_weights
from conftest import ROOT, make_samples

needs_peft = pytest.mark.skipif(importlib.util.find_spec("peft") is None,
                                reason='needs peft (pip install "arrcoc[peft]"; the dev extra installs it)')
SPEC = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}


def lora_model(seed: int = 0, **spec) -> ARRCOCModel:
    torch.manual_seed(seed)
    return ARRCOCModel(llm=LanguageModel(lora={**SPEC, **spec}))


def nudge_adapters(model: ARRCOCModel, seed: int = 1) -> None:
    """Give every ``lora_B`` (zero at init, so the adapters change nothing) random values: the adapters now matter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.llm.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


def batch_of(model: ARRCOCModel) -> dict:
    items = [("What color is the triangle?", "red"), ("Is there a blue square?", "no")]
    return collate_vqa(make_samples(model, items, [0, 1]), model.tokenizer.pad_token_id)


def llm_trainable(model: ARRCOCModel) -> tuple[set[str], set[str]]:
    """(names of the LLM's trainable parameters, names of its adapter parameters)."""
    named = dict(model.llm.named_parameters())
    return {n for n, p in named.items() if p.requires_grad}, {n for n in named if is_adapter_key(n)}


def logits(model: ARRCOCModel, batch: dict) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**model_inputs(batch), budget=64).logits


@needs_peft
def test_lora_wraps_the_llm_and_only_the_adapters_train():
    phase = FinetunePhase(lora_model())
    trainable, adapters = llm_trainable(phase.model)
    assert adapters and trainable == adapters
    assert {n.split(".")[-3] for n in adapters} == {"lora_A", "lora_B"}
    targeted = {n.split(".")[-4] for n in adapters}
    assert targeted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}  # not lm_head
    llm_params = {id(p) for g in phase.param_groups() if g["name"] == "llm" for p in g["params"]}
    assert llm_params == {id(p) for n, p in phase.model.llm.named_parameters() if is_adapter_key(n)}
    rows = {r.split()[0]: r.split()[1:] for r in parameter_table(phase).splitlines()[1:]}
    assert rows["llm.lora"][0] == rows["llm.lora"][1] != "0"  # every adapter weight trains
    assert rows["llm.base"][0] == "0" and rows["llm"][0] == rows["llm.lora"][0]  # no base weight does
    # a phase that does not train the LLM freezes the adapters too
    relevance = RelevancePhase(lora_model())
    assert not any(p.requires_grad for p in relevance.model.llm.parameters())


@needs_peft
def test_forward_and_backward_through_the_model_reach_only_the_adapters():
    phase = FinetunePhase(lora_model())
    model = phase.model
    out = model(**model_inputs(batch_of(model)), return_logits=False)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for name, p in model.llm.named_parameters():
        if is_adapter_key(name):
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        else:
            assert p.grad is None, name
    # lora_B starts at zero, so the first gradient reaches it (lora_A's is zero until B moves)
    assert any(p.grad.abs().sum() > 0 for n, p in model.llm.named_parameters() if "lora_B" in n)
    assert model.projector[0].weight.grad is not None  # the rest of phase 3 trains as before


@needs_peft
def test_lora_weights_round_trip_through_a_checkpoint(tmp_path):
    source = FinetunePhase(lora_model(seed=0))
    nudge_adapters(source.model)
    torch.save({"state_dict": source.state_dict()}, tmp_path / "lora.ckpt")
    target = FinetunePhase(lora_model(seed=1), init_from=str(tmp_path / "lora.ckpt"))
    assert set(target.load_report.values()) == {"loaded"}
    want = source.model.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in target.model.state_dict().items())
    fresh = FinetunePhase(lora_model(seed=2))
    fresh.load_state_dict(source.state_dict(), strict=True)  # what a --ckpt_path resume does
    assert all(torch.equal(v, want[k]) for k, v in fresh.model.state_dict().items())


@needs_peft
def test_init_from_a_checkpoint_without_lora_loads_the_base_weights(tmp_path):
    """Phase 2 (no LoRA) -> phase 3 with LoRA: every base weight lands under peft's name, the adapters keep their
    initialisation, and the model answers exactly as the plain one did (lora_B is zero)."""
    torch.manual_seed(0)
    phase2 = RelevancePhase(ARRCOCModel())
    torch.save({"state_dict": phase2.state_dict()}, tmp_path / "phase2.ckpt")
    phase3 = FinetunePhase(lora_model(seed=1), init_from=str(tmp_path / "phase2.ckpt"))
    report = phase3.load_report
    assert report["llm"] == "loaded (LoRA adapters: init)" and report["projector"] == "loaded"
    plain = phase2.model.state_dict()
    own = phase3.model.state_dict()
    base = [k for k in own if not is_adapter_key(k)]
    assert {plain_key(k) for k in base} == set(plain)
    assert all(torch.equal(own[k], plain[plain_key(k)]) for k in base)
    batch = batch_of(phase2.model)
    assert torch.allclose(logits(phase3.model, batch), logits(phase2.model, batch), atol=1e-5)


@needs_peft
def test_a_lora_checkpoint_into_a_model_without_lora_is_a_clear_error(tmp_path):
    torch.save({"state_dict": FinetunePhase(lora_model()).state_dict()}, tmp_path / "lora.ckpt")
    with pytest.raises(ValueError, match=r"holds LoRA adapters this model lacks .*llm.lora: null.*merge_lora"):
        load_weights(ARRCOCModel(), str(tmp_path / "lora.ckpt"))
    with pytest.raises(ValueError, match=r"holds LoRA adapters this model lacks .*targets other modules"):
        load_weights(lora_model(target_modules=["q_proj"]), str(tmp_path / "lora.ckpt"))


@needs_peft
def test_the_consolidated_deepspeed_file_carries_the_adapters(tmp_path):
    """What a ZeRO checkpoint holds of a LoRA phase (the adapters and the other trained weights) plus the frozen
    ones DeepSpeedSharding adds back (the LLM's base among them) is the whole model, under the same names."""
    phase = FinetunePhase(lora_model())
    nudge_adapters(phase.model)
    trained = {k: p.detach().clone() for k, p in phase.named_parameters() if p.requires_grad}
    frozen = frozen_state(phase)
    assert any(is_adapter_key(k) for k in trained) and not any(is_adapter_key(k) for k in frozen)
    assert any(".base_layer." in k for k in frozen)
    state, _ = add_frozen(trained, frozen)
    torch.save({"state_dict": state}, tmp_path / "consolidated.pt")
    loaded = FinetunePhase(lora_model(seed=3), init_from=str(tmp_path / "consolidated.pt"))
    assert set(loaded.load_report.values()) == {"loaded"}
    want = phase.model.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in loaded.model.state_dict().items())


@needs_peft
def test_merging_gives_the_same_logits_and_a_plain_model(tmp_path):
    from transformers import AutoModelForCausalLM

    model = lora_model()
    nudge_adapters(model)
    batch = batch_of(model)
    adapted = logits(model, batch)
    plain_before = logits(ARRCOCModel(), batch)  # a model without the adapters answers differently
    assert not torch.allclose(adapted, plain_before, atol=1e-3)
    hidden = torch.randn(3, model.llm.hidden_size)
    with torch.no_grad():
        adapted_lm = model.llm.model(inputs_embeds=hidden[None]).logits
    merged = model.llm.merge_lora()
    assert model.llm.lora is None and not any(is_adapter_key(n) for n, _ in merged.named_parameters())
    assert torch.allclose(logits(model, batch), adapted, atol=1e-4)
    # the merged model's state dict has the plain names: init_from into a config with lora: null
    assert set(model.state_dict()) == set(ARRCOCModel().state_dict())
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "merged.ckpt")
    plain = ARRCOCModel()
    assert set(load_weights(plain, str(tmp_path / "merged.ckpt")).values()) == {"loaded"}
    assert torch.allclose(logits(plain, batch), adapted, atol=1e-4)
    # and the LLM alone exports as a plain transformers checkpoint
    out = model.llm.save_pretrained(tmp_path / "llm")
    reread = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        assert torch.allclose(reread(inputs_embeds=hidden[None]).logits, adapted_lm, atol=1e-4)
    assert (out / "tokenizer_config.json").is_file()


@needs_peft
def test_a_resumed_lora_run_keeps_the_base_frozen(tmp_path):
    """Train a step, save, resume with --ckpt_path: the phase's freezing runs again on the new model and must train
    the adapters alone, before and after the checkpoint is restored (a bug seen in other VLM trainers: resuming
    unfroze every LLM weight)."""
    from arrcoc.data.datamodule import VQADataModule
    from arrcoc.data.sample_task import SampleTaskConfig

    def data():
        return VQADataModule(sample_task=SampleTaskConfig(train=16, val=4), cache_dir=str(tmp_path / "c"),
                             batch_size=4, samples_per_epoch=16, num_workers=0, shuffle_buffer=1)

    seen = []

    class Check(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            trainable, adapters = llm_trainable(pl_module.model)
            in_optimizer = {id(p) for opt in trainer.optimizers for g in opt.param_groups for p in g["params"]}
            base = [p for n, p in pl_module.model.llm.named_parameters() if not is_adapter_key(n)]
            seen.append((trainable == adapters, not any(id(p) in in_optimizer for p in base)))

    def trainer(steps):
        ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
        return L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, default_root_dir=str(tmp_path),
                         callbacks=[ckpt, EncoderFreezing(), Check()])

    first = FinetunePhase(lora_model(), relevance_weight=0.0, need_weight=0.0, distill_weight=0.0)
    base_before = {n: p.detach().clone() for n, p in first.model.llm.named_parameters() if not is_adapter_key(n)}
    trainer(1).fit(first, datamodule=data())
    resumed = FinetunePhase(lora_model(seed=5), relevance_weight=0.0, need_weight=0.0, distill_weight=0.0)
    trainer(2).fit(resumed, datamodule=data(), ckpt_path=str(tmp_path / "ck" / "last.ckpt"))
    assert len(seen) == 2 and all(ok for pair in seen for ok in pair)
    trainable, adapters = llm_trainable(resumed.model)
    assert trainable == adapters
    resumed._freeze()  # the freezing path once more, as a later set-up would run it
    assert llm_trainable(resumed.model)[0] == adapters
    after = dict(resumed.model.llm.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in base_before.items())  # the base never moved


@needs_peft
def test_the_lora_preset_layer_builds_a_lora_phase(tmp_path):
    from arrcoc.train.cli import build_cli

    cli = build_cli(["--config", str(ROOT / "configs/phase3.yaml"), "--config", str(ROOT / "configs/presets/lora.yaml"),
                     "--data.cache_dir", str(tmp_path), "--trainer.default_root_dir", str(tmp_path),
                     "--model.init_args.init_from", "null"], run=False)  # no phase-2 run here
    phase = cli.model
    assert isinstance(phase, FinetunePhase)
    assert phase.model.llm.lora == LoraSpec(r=16, alpha=32, dropout=0.05, target_modules="all-linear")
    groups = [g for g in phase.param_groups() if g["name"] == "llm"]
    assert groups and all(g["base_lr"] == 2e-4 for g in groups)
    assert all(is_adapter_key(n) for n, p in phase.model.llm.named_parameters() if p.requires_grad)


def test_lora_settings_are_checked_and_peft_is_named_when_missing(monkeypatch):
    with pytest.raises(ValueError, match=r"llm.lora.r=0 must be an integer >= 1"):
        LoraSpec(r=0)
    with pytest.raises(ValueError, match=r"llm.lora.dropout=1.0 must be in \[0, 1\)"):
        LoraSpec(dropout=1.0)
    with pytest.raises(ValueError, match=r"llm.lora.target_modules=\[\] must be 'all-linear' or a non-empty list"):
        LoraSpec(target_modules=[])
    with pytest.raises(ValueError, match=r"llm.lora has unknown fields \['rank'\]; valid: r, alpha"):
        LanguageModel(lora={"rank": 8})
    monkeypatch.setitem(sys.modules, "peft", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r'llm.lora needs the peft package: pip install "arrcoc\[peft\]"'):
        LanguageModel(lora={"r": 4})
    assert LanguageModel().lora is None  # the default needs no peft


@needs_peft
def test_target_modules_that_match_nothing_name_the_linear_layers():
    with pytest.raises(ValueError, match=r"target_modules=\['qkv'\] matches no module of 'arrcoc-tiny-lm'; its "
                                         r"linear layers are named \[.*'q_proj'"):
        LanguageModel(lora={"target_modules": ["qkv"]})


def test_key_names_map_between_lora_and_plain_models():
    lora = "llm.model.base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"
    assert plain_key(lora) == "llm.model.model.layers.0.self_attn.q_proj.weight"
    assert plain_key("llm.model.model.norm.weight") == "llm.model.model.norm.weight"
    assert is_adapter_key("llm.model.base_model.model.model.layers.0.mlp.up_proj.lora_B.default.weight")
    assert not is_adapter_key(lora)


def test_the_lora_layer_round_trips_through_print_config(tmp_path, capsys):
    """What a run records (config.yaml) with LoRA on parses back to the same config; no peft needed to parse."""
    from arrcoc.cli import main

    def printed(*configs: str) -> str:
        capsys.readouterr()
        with pytest.raises(SystemExit) as stop:
            main(["fit", *(a for c in configs for a in ("--config", c)), "--print_config"])
        assert stop.value.code in (0, None)
        return "\n".join(line for line in capsys.readouterr().out.splitlines() if not line.startswith("[20"))

    first = printed(str(ROOT / "configs/phase3.yaml"), str(ROOT / "configs/presets/lora.yaml"))
    lora = yaml.safe_load(first)["model"]["init_args"]["model"]["init_args"]["llm"]["init_args"]["lora"]
    assert lora == {"r": 16, "alpha": 32.0, "dropout": 0.05, "target_modules": "all-linear"}
    (tmp_path / "c.yaml").write_text(first)
    assert yaml.safe_load(printed(str(tmp_path / "c.yaml"))) == yaml.safe_load(first)
