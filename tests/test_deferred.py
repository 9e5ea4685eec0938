"""A deferred LLM (``llm.deferred: true``, what the ZeRO-3 layers set): nothing of it exists until the phase's
``configure_model``, which builds it, loads ``init_from`` and freezes, ending where a phase built whole starts.
(The same under ``deepspeed.zero.Init``, weights split over two ranks: tests/test_zero3.py.)"""

import lightning as L
import torch

from arrcoc.language_model import LanguageModel
from arrcoc.model import ARRCOCModel
from arrcoc.phases import FinetunePhase


def checkpoint(tmp_path) -> str:
    torch.manual_seed(0)
    path = tmp_path / "phase2.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in ARRCOCModel().state_dict().items()}}, path)
    return str(path)


def test_a_deferred_llm_has_its_width_and_tokenizer_but_no_weights():
    llm = LanguageModel(pretrained="text", deferred=True)
    assert not llm.built and llm.model is None and not list(llm.parameters())
    assert llm.hidden_size == 128 and llm.tokenizer is not None and llm.image_token_id is not None
    model = ARRCOCModel(llm=llm)  # the projector's width comes from the LLM's config
    assert not model.built and model.projector(torch.zeros(1, 1, model.encoder.width)).shape[-1] == 128
    assert llm.build() is llm and llm.built and llm.build().model is llm.model  # built once


def test_configure_model_builds_loads_init_from_and_freezes_like_a_whole_phase(tmp_path):
    ckpt = checkpoint(tmp_path)
    whole = FinetunePhase(ARRCOCModel(), init_from=ckpt)
    torch.manual_seed(1)
    phase = FinetunePhase(ARRCOCModel(llm=LanguageModel(deferred=True)), init_from=ckpt)
    assert phase.load_report is None  # init_from waits for the weights
    phase.configure_model()
    assert phase.model.built and phase.load_report == whole.load_report
    ref = dict(whole.model.named_parameters())
    for name, p in phase.model.named_parameters():
        assert torch.equal(p, ref[name]), name
        assert p.requires_grad == ref[name].requires_grad, name
    llm = list(phase.model.llm.parameters())
    phase.configure_model()  # Lightning calls it again for validate/predict: nothing is rebuilt or reloaded
    assert all(a is b for a, b in zip(llm, phase.model.llm.parameters(), strict=True))


def test_a_deferred_phase_trains_its_llm_through_lightning(tmp_path):
    from arrcoc.data.datamodule import VQADataModule
    from arrcoc.data.sample_task import SampleTaskConfig

    dm = VQADataModule(sample_task=SampleTaskConfig(train=16, val=4), cache_dir=str(tmp_path / "c"), batch_size=4,
                       samples_per_epoch=16, num_workers=0, shuffle_buffer=1)
    phase = FinetunePhase(ARRCOCModel(llm=LanguageModel(pretrained="text", deferred=True)))
    seen = {}

    class Check(L.Callback):
        def on_train_start(self, trainer, pl_module):
            seen["llm_in_optimizer"] = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]} >= {
                id(p) for p in pl_module.model.llm.parameters() if p.requires_grad}
            seen["llm_trains"] = any(p.requires_grad for p in pl_module.model.llm.parameters())
            seen["before"] = {n: p.detach().clone() for n, p in pl_module.model.llm.named_parameters()}

    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
                        default_root_dir=str(tmp_path), callbacks=[Check()])
    trainer.fit(phase, datamodule=dm)
    assert seen["llm_in_optimizer"] and seen["llm_trains"]
    after = dict(phase.model.llm.named_parameters())
    assert any(not torch.equal(after[n], v) for n, v in seen["before"].items())  # the deferred LLM learned
