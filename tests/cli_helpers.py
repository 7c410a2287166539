"""The CLI run in-process, as the console script runs it."""

from __future__ import annotations

import sys

import pytest

from tuneproxy import cli


def run_cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    """``tuneproxy ARGS`` in this process: (exit code, stdout, stderr)."""
    sys.argv = ["tuneproxy", *map(str, args)]
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return code if isinstance(code, int) else (0 if code is None else 1), out, err
