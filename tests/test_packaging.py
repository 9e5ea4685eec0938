"""The install exposes one namespace: arrcoc, arrcoc.data, arrcoc.callbacks; nothing top-level."""

import subprocess
import sys


def test_subpackages_and_no_top_level_data_module(tmp_path):
    code = ("import importlib.util as u, arrcoc.data, arrcoc.callbacks, arrcoc.encoder;"
            "print(u.find_spec('data') is None, u.find_spec('callbacks') is None,"
            " arrcoc.data.__file__.endswith('data/__init__.py'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "True"], out.stdout + out.stderr


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "arrcoc.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "demo" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "arrcoc.cli", "fly"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown command 'fly'" in bad.stderr


def test_wheel_contents(tmp_path):
    """A regular (non-editable) install ships every subpackage and the presets, and nothing top-level
    but arrcoc."""
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(root),
                    "-w", str(tmp_path)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("arrcoc-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    # every source module, wherever it lives in the checkout (data/ and callbacks/ install under arrcoc/)
    sources = [f"arrcoc/{f.relative_to(root / 'arrcoc').as_posix()}" for f in (root / "arrcoc").rglob("*.py")]
    sources += [f"arrcoc/{d}/{f.relative_to(root / d).as_posix()}" for d in ("data", "callbacks")
                for f in (root / d).rglob("*.py")]
    assert "arrcoc/processing/text.py" in sources and "arrcoc/data/stream.py" in sources
    for required in (*sources, "arrcoc/presets/arrcoc-tiny-vit.json", "arrcoc/presets/arrcoc-tiny-vit-shapes.pt",
                     "arrcoc/presets/arrcoc-tiny-lm-text/model.safetensors",
                     "arrcoc/presets/arrcoc-tiny-lm-text/config.json"):
        assert required in names, required
    import arrcoc

    assert {n.split("/")[0] for n in names} == {"arrcoc", f"arrcoc-{arrcoc.__version__}.dist-info"}


def test_lazy_public_names_resolve():
    import arrcoc

    for name in arrcoc.__all__:
        assert getattr(arrcoc, name).__name__ == name
