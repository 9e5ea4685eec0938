"""A quiet console: a fit shows arrcoc's messages, not library noise (Lightning's eval-mode warning about the
frozen encoder, a deprecation inside Lightning, LightningCLI's own-arguments warning, a logging-service tip, the
CSV logger's complaint about the directory it shares with TensorBoard, transformers' weight-loading bar);
`--verbose` brings them back."""

import pytest

from conftest import TINY, arrcoc

NOISE = ("module(s) in eval mode at the start of training", "LeafSpec", "LightningCLI's args parameter", "💡 Tip",
         "exists and is not empty", "Loading weights")


@pytest.mark.slow  # two short fits in subprocesses
def test_a_fit_shows_no_library_noise_unless_verbose(tmp_path):
    args = ["fit", "--config", "configs/phase1.yaml", *TINY, "--data.cache_dir", str(tmp_path / "cache")]
    quiet = arrcoc(*args, "--trainer.default_root_dir", str(tmp_path / "quiet"))
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    console = quiet.stdout + quiet.stderr
    assert "[arrcoc]" in console  # arrcoc's own messages are there
    assert [n for n in NOISE if n in console] == []
    loud = arrcoc(*args, "--trainer.default_root_dir", str(tmp_path / "loud"), "--verbose")
    assert loud.returncode == 0, loud.stderr[-2000:]
    assert "module(s) in eval mode at the start of training" in loud.stdout + loud.stderr
