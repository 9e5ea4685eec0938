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
