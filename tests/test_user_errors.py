"""Errors a user can act on: a mistake in what the user gave is one sentence naming the field or the file (with
the configs), exit code 2, and no traceback unless --verbose."""

import pytest

from arrcoc.train.cli import main
from conftest import ROOT

PHASE3 = str(ROOT / "configs/phase3.yaml")


def _run(capsys, *args):
    code = main(["fit", "--config", PHASE3, *args])
    err = capsys.readouterr().err
    return code, err


def test_a_bad_value_is_its_sentence(capsys, tmp_path):
    code, err = _run(capsys, "--model.init_args.model.min_tokens", "300", "--model.init_args.model.max_tokens", "100",
                     "--trainer.default_root_dir", str(tmp_path))
    assert code == 2
    assert "arrcoc fit: error: min_tokens=300 > max_tokens=100; need min_tokens <= max_tokens" in err
    assert f"configs: {PHASE3}" in err and "Traceback" not in err and "Namespace(" not in err


def test_verbose_shows_the_traceback(capsys, tmp_path):
    with pytest.raises(ValueError):
        main(["fit", "--config", PHASE3, "--model.init_args.model.min_tokens", "300",
              "--model.init_args.model.max_tokens", "100", "--trainer.default_root_dir", str(tmp_path), "--verbose"])


@pytest.mark.parametrize("content, says", [
    (b"hello\n", "is not a readable checkpoint (KeyError"),
    (b"", "is an empty file (0 bytes"),
    (b"PK\x03\x04 a zip archive cut off", "is not a readable checkpoint"),
])
def test_a_broken_init_from_names_the_file(capsys, tmp_path, content, says):
    ckpt = tmp_path / "prev.ckpt"
    ckpt.write_bytes(content)
    code, err = _run(capsys, "--model.init_args.init_from", str(ckpt), "--trainer.default_root_dir", str(tmp_path))
    assert code == 2
    assert f"init_from='{ckpt}' {says}" in err and "Traceback" not in err


def test_a_broken_resume_checkpoint_names_the_file(capsys, tmp_path):
    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"")
    code, err = _run(capsys, "--ckpt_path", str(ckpt), "--trainer.default_root_dir", str(tmp_path))
    assert code == 2 and f"--ckpt_path '{ckpt}' is not a readable checkpoint (0 bytes" in err


def test_a_config_that_is_not_yaml_is_named(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_steps: [1\n")
    code, err = _run(capsys, "--config", str(bad))
    assert code == 2 and f"--config {bad} is not valid YAML at line 3" in err


def test_a_run_directory_that_cannot_be_written_fails_first(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    run_dir = blocker / "run"  # under a file: no directory can be made there (what a read-only place also gives)
    code, err = _run(capsys, "--trainer.default_root_dir", str(run_dir))
    assert code == 2 and f"trainer.default_root_dir='{run_dir}' is not writable" in err


def test_a_broken_manifest_names_the_file(tmp_path):
    from arrcoc.data.shards import read_manifest

    (tmp_path / "manifest.json").write_text('{"shards": [')
    with pytest.raises(ValueError, match=r"manifest.json is not a readable manifest \(Expecting value"):
        read_manifest(tmp_path)


def test_a_bad_image_says_what_the_bytes_were(tmp_path):
    from arrcoc.data.shards import BadSample, RawSample, decode

    raw = RawSample("k1", "shard-000000.tar", {"json": b'{"question": "q?", "answers": ["a"], "question_id": 1}',
                                               "png": b"not an image"})
    with pytest.raises(BadSample, match=r"png \(12 bytes\): cannot identify image file the image") as err:
        decode(raw)
    assert "BytesIO" not in str(err.value)


def test_the_cli_does_not_warn_about_its_own_arguments(tmp_path):
    # `arrcoc fit ...` passes LightningCLI the command line it also finds in sys.argv; its warning about that is
    # noise to a user (issue 15's quiet console)
    from conftest import arrcoc

    out = arrcoc("fit", "--config", PHASE3, "--model.init_args.model.min_tokens", "300",
                 "--model.init_args.model.max_tokens", "100", "--trainer.default_root_dir", str(tmp_path))
    assert out.returncode == 2 and "min_tokens=300" in out.stderr
    assert "LightningCLI's args parameter" not in out.stderr + out.stdout
