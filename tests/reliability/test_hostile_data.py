"""Data files a hostile but realistic user hands over: each is a finding with its code and line, or a
usage error, never an internal error or a hang."""

from __future__ import annotations

import importlib
import json
import os
import tracemalloc

import pytest

from tuneproxy.contract import DatasetRules
from tuneproxy.dataset import validate
from tuneproxy.errors import DataFileUnreadable

ANSWER = '{"role": "assistant", "content": "ok"}'


def _user(**fields: object) -> str:
    return json.dumps({"role": "user", "content": "hi", **fields})


def _user_with(raw: str) -> str:
    """A user message with one more key whose JSON is written as given."""
    return '{"role": "user", "content": "hi", ' + raw + "}"


@pytest.mark.parametrize(("text", "code"), [
    ('{"messages": [{"role": "user", "content": "hi \\ud800 there"}, ' + ANSWER + "]}\n", "TP101"),
    ('{"messages": [{"role": ["user"], "content": "hi"}, ' + ANSWER + "]}\n", "TP302"),
    ('{"messages": [{"role": {"r": 1}, "content": "hi"}, ' + ANSWER + "]}\n", "TP302"),
    ('{"messages": ' + "[" * 5000 + "]" * 5000 + "}\n", "TP101"),
    ('{"messages": [' + _user_with('"n": ' + "1" * 400) + ", " + ANSWER + "]}\n", "TP103"),
    ('{"messages": [' + _user_with('"n": 1e400') + ", " + ANSWER + "]}\n", "TP103"),
    ('{"messages": [' + _user_with('"x": ' + "[" * 300 + "]" * 300) + ", " + ANSWER + "]}\n", "TP101"),
    ('{"messages": [' + _user_with('"n": 18446744073709551616, "text": "\\ud800"') + ", " + ANSWER + "]}\n",
     "TP101"),
    ('{"messages": [' + _user(content=[{"type": "image_url", "image_url": "https://x"}]) + ", " + ANSWER + "]}\n",
     "TP303"),
    ('{"messages": [' + _user(content=[{"type": ["text"]}]) + ", " + ANSWER + "]}\n", "TP303"),
    ('{"messages": [' + _user() + ", " + ANSWER + ', {"role": "tool", "content": "r", "tool_call_id": ["a"]}]}\n',
     "TP309"),
    ('{"messages": [' + _user() + ', {"role": "assistant", "content": "ok", "tool_calls": [{"id": "a", "type": '
     '"function", "function": {"name": "f", "arguments": "' + "[" * 5000 + '"}}]}]}\n', "TP309"),
], ids=["lone-surrogate", "role-is-a-list", "role-is-an-object", "nested-5000-deep", "integer-past-a-double",
        "exponent-past-a-double", "nested-300-deep-in-a-message", "lone-surrogate-after-a-64-bit-integer",
        "image-url-is-text", "part-type-is-a-list", "tool-call-id-is-a-list", "tool-arguments-nested-5000-deep"])
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


def _one_huge_line_then_an_example(path, size: int) -> None:
    """``size`` bytes of one repeated character on line 1 (written a megabyte at a time), then on line 2
    a valid example whose e-mail address gives a warning that names its line."""
    with path.open("wb") as handle:
        for _ in range(size // 1_000_000):
            handle.write(b"a" * 1_000_000)
        handle.write(b"\n")
        handle.write(b'{"messages": [{"role": "user", "content": "mail ann@example.com"}, '
                     + ANSWER.encode() + b"]}\n")


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "parallel"])
def test_a_50_mb_line_is_rejected_in_flat_memory_and_the_next_line_keeps_its_number(tmp_path, workers):
    path = tmp_path / "data.jsonl"
    _one_huge_line_then_an_example(path, 50_000_000)
    warm = tmp_path / "warm.jsonl"  # loads the token counter once (tens of MB), outside the measurement
    warm.write_text('{"messages": [{"role": "user", "content": "a"}, ' + ANSWER + "]}\n")
    validate(warm)
    tracemalloc.start()
    try:
        report = validate(path, workers=workers)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [f["line"] for f in report.of("TP105")] == [1]
    assert "50,000,001 bytes" in report.of("TP105")[0]["message"]
    assert report.stats.examples == 1
    assert [f["line"] for f in report.of("TP602")] == [2]
    assert not report.ok
    assert peak < 10_000_000, f"peak {peak:,} bytes while reading a 50 MB line"


def test_a_stray_number_text_on_an_image_part_does_not_break_token_counting(tmp_path):
    path = tmp_path / "data.jsonl"
    part = {"type": "image_url", "image_url": {"url": "https://x"}, "text": 5}
    path.write_text('{"messages": [' + _user(content=[part]) + ", " + ANSWER + "]}\n", encoding="utf-8")
    assert validate(path).stats.examples == 1


@pytest.mark.parametrize("line", ['{"messages": ["a"]}', '{"messages": true}',
                                  '{"input": [[]], "preferred_output": [], "non_preferred_output": []}'],
                         ids=["messages-of-text", "messages-not-a-list", "input-not-an-object"])
def test_a_holdout_line_that_is_no_example_does_not_break_validation(tmp_path, line):
    train, holdout = tmp_path / "train.jsonl", tmp_path / "holdout.jsonl"
    train.write_text('{"text": "a"}\n')
    holdout.write_text(line + "\n")
    assert validate(train, holdout=holdout).stats.examples == 1


def test_a_file_of_blank_lines_checked_in_parallel_spans_is_still_empty(tmp_path, monkeypatch):
    monkeypatch.setattr(importlib.import_module("tuneproxy.dataset.validate"), "PARALLEL_MIN_BYTES", 0)
    path = tmp_path / "data.jsonl"
    path.write_text("  \n" * 300)
    assert [f["line"] for f in validate(path, workers=3).of("TP001")] == [0]


def test_a_file_checked_in_parallel_spans_finds_every_line_of_another_format(tmp_path, monkeypatch):
    monkeypatch.setattr(importlib.import_module("tuneproxy.dataset.validate"), "PARALLEL_MIN_BYTES", 0)
    path = tmp_path / "data.jsonl"
    path.write_text('{"foo": 1}\n{"text": "a"}\n{"text": "b"}\n' + '{"prompt": "p", "completion": "c"}\n' * 3)
    assert [f["line"] for f in validate(path, workers=3).of("TP202")] == [4, 5, 6]


def test_crlf_endings_checked_in_parallel_spans_are_one_finding_with_the_file_total(tmp_path, monkeypatch):
    monkeypatch.setattr(importlib.import_module("tuneproxy.dataset.validate"), "PARALLEL_MIN_BYTES", 0)
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"text": "a"}\r\n' * 1200)
    crlf = validate(path, workers=3).of("TP005")
    assert [(f["line"], f["message"].split()[0]) for f in crlf] == [(1, "1,200")]
    assert crlf == validate(path, workers=1).of("TP005")


@pytest.mark.parametrize(("text", "code"), [
    ('{"text": "a"}\n' * 100 + '{"text": "\x00"}\n' + '{"foo": 1}\n' * 200, "TP004"),
    ("[\n" + '{"text": "a"},\n' * 300 + "{}]\n", "TP008"),
], ids=["nul-byte", "json-array"])
def test_reading_stops_at_a_file_wide_verdict_in_parallel_spans_too(tmp_path, monkeypatch, text, code):
    monkeypatch.setattr(importlib.import_module("tuneproxy.dataset.validate"), "PARALLEL_MIN_BYTES", 0)
    path = tmp_path / "data.jsonl"
    path.write_text(text)
    report = validate(path, workers=3)
    assert code in report.counts
    assert "TP201" not in report.counts and "TP101" not in report.counts
    assert report.counts == validate(path, workers=1).counts


def test_a_format_the_service_does_not_train_on_is_found_once_when_it_starts_in_a_later_span(tmp_path,
                                                                                            monkeypatch):
    monkeypatch.setattr(importlib.import_module("tuneproxy.dataset.validate"), "PARALLEL_MIN_BYTES", 0)
    path = tmp_path / "data.jsonl"
    path.write_text('{"foo": 1}\n' * 300 + '{"text": "a"}\n' * 300)
    report = validate(path, rules=DatasetRules(), workers=3)
    assert [f["line"] for f in report.of("TP204")] == [301]
    assert report.format == "text"
