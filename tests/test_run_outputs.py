"""What a phase run leaves to look at (issue 15): TensorBoard and CSV logs in one version directory, allocation
figures for the same validation samples each time (PNG files with any logger, TensorBoard figures with that one),
progress lines where no bar is drawn, and report.md at the end of fit."""

import logging

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from PIL import Image

from arrcoc.callbacks import AllocationFigures, ProgressLines, RunReport
from arrcoc.model import ARRCOCModel
from arrcoc.phases import RelevancePhase


@pytest.mark.slow
def test_a_phase_run_writes_tensorboard_csv_figures_and_a_report(chain):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logs = chain[2] / "logs"
    assert [p.name for p in logs.iterdir()] == ["version_0"], "TensorBoard and CSV share one version"
    run = logs / "version_0"
    for name in ("metrics.csv", "config.yaml", "report.md", "budget_histogram.png", "accuracy_vs_tokens.png"):
        assert (run / name).is_file(), name
    figures = sorted(p.name for p in (run / "figures" / "step000004").glob("*.png"))
    assert figures == [f"sample{i}.png" for i in range(4)]
    events = EventAccumulator(str(run), size_guidance={"images": 0}).Reload()
    assert {f"allocation/sample{i}" for i in range(4)} <= set(events.Tags()["images"])
    assert "val/acc" in events.Tags()["scalars"] and "train/loss" in events.Tags()["scalars"]
    report = (run / "report.md").read_text()
    for part in ("# RelevancePhase: step 4", "## Final metrics", "`val/acc`", "](budget_histogram.png)",
                 "](accuracy_vs_tokens.png)", "](figures/step000004/sample0.png)", "```yaml", "class_path"):
        assert part in report, part
    assert "run report: " in chain["log2"]


def test_figures_follow_fixed_samples_and_progress_lines_come_without_a_bar(tmp_path, caplog):
    from arrcoc.data.datamodule import VQADataModule
    from arrcoc.data.sample_task import SampleTaskConfig

    dm = VQADataModule(sample_task=SampleTaskConfig(train=16, val=10), cache_dir=str(tmp_path / "c"), batch_size=4,
                       eval_batch_size=4, samples_per_epoch=16, num_workers=0, shuffle_buffer=1)
    torch.manual_seed(0)
    figures, report = AllocationFigures(num_samples=5), RunReport()
    trainer = L.Trainer(max_steps=4, val_check_interval=2, accelerator="cpu", enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
                        logger=CSVLogger(str(tmp_path), name="logs"), default_root_dir=str(tmp_path),
                        callbacks=[figures, ProgressLines(every_n_steps=2), report])
    with caplog.at_level(logging.INFO, logger="arrcoc.train"):
        trainer.fit(RelevancePhase(ARRCOCModel()), datamodule=dm)

    # a CSV-only run gets the PNG files; the same five questions at both validations (batches of 4: two batches)
    assert [d.name for d in figures.written] == ["step000002", "step000004"]
    assert len(figures.shown) == 2 and figures.shown[0] == figures.shown[1] and len(set(figures.shown[0])) > 1
    for directory in figures.written:
        pngs = sorted(directory.glob("sample*.png"))
        assert len(pngs) == 5
        with Image.open(pngs[0]) as img:
            assert img.width > 200 and img.height > 200
    lines = [r.getMessage() for r in caplog.records if "RelevancePhase step" in r.getMessage()]
    assert [line.split(",")[0] for line in lines] == ["RelevancePhase step 2/4 (50%)", "RelevancePhase step 4/4 (100%)"]
    assert all("loss " in line and "visual tokens " in line and "samples/s " in line for line in lines)
    text = report.path.read_text()
    assert "## Allocation figures (step000004)" in text and "`val/acc`" in text and "## Config" not in text


def test_callback_arguments_are_checked():
    with pytest.raises(ValueError, match="num_samples=-1"):
        AllocationFigures(num_samples=-1)
    with pytest.raises(ValueError, match="every_n_steps=0"):
        ProgressLines(every_n_steps=0)
