"""The README's examples work as written: the replay commands run verbatim, the Python example type-checks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def block(marker: str) -> str:
    """The fenced block right after ``<!-- marker: ... -->``."""
    found = re.search(rf"<!-- {marker}:[^>]*-->\s*```\w*\n(.*?)```", README, re.S)
    assert found, f"README.md has no block marked {marker}"
    return found.group(1)


def test_the_offline_replay_example_runs_verbatim(tmp_path):
    env = {key: value for key, value in os.environ.items()
           if not key.endswith(("_API_KEY", "_API_TOKEN")) and not key.startswith("TUNEPROXY_")}
    env.update(HOME=str(tmp_path), PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", block("replay-example")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Done:" in done.stdout and "succeeded" in done.stdout
    assert not (tmp_path / ".tuneproxy").exists()  # the example's own fresh home was used


def test_the_python_examples_type_check_strictly(tmp_path):
    pytest.importorskip("mypy")
    examples = re.findall(r"<!-- typed-example:[^>]*-->\s*```\w*\n(.*?)```", README, re.S)
    assert len(examples) == 2  # fitting, and evaluating
    paths = []
    for number, text in enumerate(examples):
        paths.append(tmp_path / f"example_{number}.py")
        paths[-1].write_text(text, encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
                           "--cache-dir", str(tmp_path / "cache"), *map(str, paths)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr


def test_fit_is_typed_as_a_tuned_model_when_waiting_and_a_job_when_not(tmp_path):
    pytest.importorskip("mypy")
    example = tmp_path / "overloads.py"
    example.write_text(
        "from typing_extensions import assert_type\n"
        "from tuneproxy import Job, TunedModel, Tuner\n"
        "tuner = Tuner('together', 'm')\n"
        "assert_type(tuner.fit('train.jsonl'), TunedModel)\n"
        "assert_type(tuner.fit('train.jsonl', wait=False), Job)\n", encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
                           "--cache-dir", str(tmp_path / "cache"), str(example)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
