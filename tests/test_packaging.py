"""The wheel: providers/ and local_backend/ install as tuneproxy.providers and tuneproxy.local_backend."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out), str(ROOT)], check=True, capture_output=True)
    return next(out.glob("tuneproxy-*.whl"))


def test_wheel_maps_backends_under_the_tuneproxy_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "tuneproxy/providers/openai.py" in names
    assert "tuneproxy/providers/together.py" in names
    assert "tuneproxy/local_backend/provider.py" in names
    assert "tuneproxy/dataset/validate.py" in names
    assert "tuneproxy/data/prices.toml" in names  # the price catalogue ships as package data
    assert not [n for n in names if n.startswith(("providers/", "local_backend/", "tests/"))]


def test_installed_wheel_imports_its_backends_from_itself(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = ("import tuneproxy, tuneproxy.providers.openai, tuneproxy.local_backend.provider as lp; "
            "from tuneproxy.prices import load_catalogue; assert len(load_catalogue()) > 0; "
            "print(tuneproxy.__file__); print(lp.__file__)")
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                         check=True).stdout.splitlines()
    assert all(line.startswith(str(target)) for line in out), out
