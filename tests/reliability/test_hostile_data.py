"""Data files a hostile but realistic user hands over: each is a finding with its code and line, or a
usage error, never an internal error or a hang."""

from __future__ import annotations

import os

import pytest

from tuneproxy.dataset import validate
from tuneproxy.errors import DataFileUnreadable

ANSWER = '{"role": "assistant", "content": "ok"}'


@pytest.mark.parametrize(("text", "code"), [
    ('{"messages": [{"role": "user", "content": "hi \\ud800 there"}, ' + ANSWER + "]}\n", "TP101"),
    ('{"messages": [{"role": ["user"], "content": "hi"}, ' + ANSWER + "]}\n", "TP302"),
    ('{"messages": [{"role": {"r": 1}, "content": "hi"}, ' + ANSWER + "]}\n", "TP302"),
    ('{"messages": ' + "[" * 5000 + "]" * 5000 + "}\n", "TP101"),
], ids=["lone-surrogate", "role-is-a-list", "role-is-an-object", "nested-5000-deep"])
def test_malformed_lines_are_findings_at_their_line(tmp_path, text, code):
    path = tmp_path / "data.jsonl"
    valid = '{"messages": [{"role": "user", "content": "a"}, ' + ANSWER + "]}\n"
    path.write_text(valid + text, encoding="utf-8")  # line 1 is fine, line 2 is the hostile one
    report = validate(path)
    assert not report.ok
    assert [f["line"] for f in report.findings if f["code"] == code] == [2]


def test_a_pipe_is_refused_at_once_instead_of_waiting_for_ever(tmp_path):
    fifo = tmp_path / "data.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(DataFileUnreadable, match="not a regular file"):
        validate(fifo)
