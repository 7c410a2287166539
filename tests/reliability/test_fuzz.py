"""Fuzzing with hypothesis: whatever a data file, a backend option or a hyperparameter holds, tuneproxy
answers with a documented finding or a documented usage error, never an exception of its own making.

Every property runs a bounded number of examples, derandomized so the suite gives the same verdict on every
run. Each ``@example`` is an input that once broke the property, kept so it stays fixed.
"""

from __future__ import annotations

import importlib
import json
import sys
from unittest import mock

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tests.conftest import FIXTURES
from tuneproxy import cli, registry
from tuneproxy.contract import Hyperparameters
from tuneproxy.dataset import CODES, load_examples, reader, validate
from tuneproxy.errors import ConfigError

validate_module = importlib.import_module("tuneproxy.dataset.validate")  # the package's `validate` is the function
# hypothesis warns when it keeps the repr of a deeply nested input; such inputs are the point here
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")


def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


# -- values ------------------------------------------------------------------------------------------------
SURROGATE = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
TEXT = st.text(st.one_of(st.characters(), SURROGATE, st.sampled_from(" \t\r\n\x00\ufeff\u2028\"\\{[")),
               max_size=12)
NUMBERS = st.one_of(st.integers(), st.floats(), st.sampled_from([2**64, 10**400, -(10**320), 1e308]))
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                    max_leaves=8)


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


DEEP = st.integers(1, 1200).map(nested)

# -- records: the shapes validation knows, filled with the wrong things -------------------------------------
ROLE = st.one_of(st.sampled_from(["system", "user", "assistant", "tool", "function", "developer", "", "User"]),
                 JSON)
PART = st.fixed_dictionaries(
    {"type": st.one_of(st.sampled_from(["text", "image_url", "input_audio", "file", "refusal", "bogus"]), JSON)},
    optional={"text": st.one_of(TEXT, JSON),
              "image_url": st.one_of(st.fixed_dictionaries({}, optional={"url": st.one_of(TEXT, JSON)}), JSON)},
)
CONTENT = st.one_of(TEXT, st.lists(PART, max_size=3), JSON)
# arguments are a JSON string, so the reader's depth limit does not reach what they nest
ARGUMENTS = st.one_of(st.builds(json.dumps, JSON), TEXT, st.integers(1, 5000).map(lambda n: "[" * n + "]" * n),
                      st.integers(1, 5000).map(lambda n: "[" * n))
TOOL_CALL = st.fixed_dictionaries({
    "id": st.one_of(TEXT, JSON), "type": st.just("function"),
    "function": st.one_of(st.fixed_dictionaries({"name": st.one_of(TEXT, JSON), "arguments": ARGUMENTS}), JSON),
})
WEIGHT = st.one_of(st.sampled_from([0, 1, 1.0, 0.5, True, "1", 2, -1, None]), JSON)
MESSAGE = st.builds(
    lambda extra, message: {**extra, **message},
    st.dictionaries(TEXT, JSON, max_size=1),
    st.fixed_dictionaries({"role": ROLE}, optional={
        "content": CONTENT, "weight": WEIGHT, "tool_calls": st.one_of(st.lists(TOOL_CALL, max_size=2), JSON),
        "tool_call_id": st.one_of(TEXT, JSON), "name": st.one_of(TEXT, JSON), "nested": DEEP,
    }),
)
MESSAGES = st.one_of(st.lists(MESSAGE, max_size=5), JSON)
CHAT = st.fixed_dictionaries({"messages": MESSAGES}, optional={
    "tools": st.one_of(st.lists(st.fixed_dictionaries({"type": st.just("function"), "function": JSON})), JSON),
    "weight": WEIGHT, "metadata": JSON, "parallel_tool_calls": JSON, "extra": JSON,
})
PREFERENCE = st.fixed_dictionaries({
    "input": st.one_of(st.fixed_dictionaries({"messages": MESSAGES}), JSON),
    "preferred_output": MESSAGES, "non_preferred_output": MESSAGES,
}, optional={"metadata": JSON})
COMPLETION = st.fixed_dictionaries({"prompt": st.one_of(TEXT, JSON), "completion": st.one_of(TEXT, JSON)})
PLAIN = st.fixed_dictionaries({"text": st.one_of(TEXT, JSON)}, optional={"metadata": JSON})
RECORD = st.one_of(CHAT, PREFERENCE, COMPLETION, PLAIN, st.dictionaries(TEXT, JSON, max_size=3))


def encode(value, ascii_only: bool) -> bytes:
    """One JSON line as an editor would save it: escapes (``\\ud800``) or raw characters, where a lone
    surrogate becomes bytes that are not UTF-8."""
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


LINE = st.one_of(
    st.builds(encode, RECORD, st.booleans()),
    st.builds(encode, JSON, st.booleans()),
    st.builds(encode, DEEP, st.just(True)),
    st.binary(max_size=24),
    st.sampled_from([b"", b"   ", b"[", b"]", b"{", b'{"messages": [', b"\xef\xbb\xbf", b"NaN", b"\x00", b"\xff",
                     b'{"text": "a"} {"text": "b"}', b'{"text": 1e400}', b'{"text": "\\ud800"}']),
)
ENDING = st.sampled_from([b"\n", b"\n", b"\r\n", b"\r"])


@st.composite
def files(draw, lines=LINE) -> bytes:
    """A file of fuzzed lines, CRLF or LF (or a stray CR), maybe a BOM first, maybe no final newline."""
    body = b"".join(line + ending for line, ending in draw(st.lists(st.tuples(lines, ENDING), max_size=8)))
    if draw(st.booleans()):
        body = body.rstrip(b"\n")
    return (reader.BOM if draw(st.booleans()) else b"") + body


def line_count(data: bytes) -> int:
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


def _assert_documented(report, data: bytes) -> None:
    assert set(report.counts) <= set(CODES)
    for item in report.findings:
        assert item["code"] in CODES and item["name"] == CODES[item["code"]].name
        assert type(item["line"]) is int and 0 <= item["line"] <= line_count(data), item
    assert report.ok is (report.errors == 0)


# -- the JSONL reader and validator --------------------------------------------------------------------------
@fuzz(250)
@given(data=files())
@example(data=b'{"n": 18446744073709551616, "text": "\\ud800"}\n')  # a lone surrogate after a 64-bit integer
@example(data=b'{"messages": [{"role": "user", "content": "hi", "n": ' + b"1" * 400 + b"}, "
            b'{"role": "assistant", "content": "ok"}]}\n')  # a number past a double's range
@example(data=b'{"messages": [{"role": "user", "content": "hi", "x": ' + b"[" * 300 + b"]" * 300 + b"}, "
            b'{"role": "assistant", "content": "ok"}]}\n')  # nested past what the fingerprint can write
@example(data=b"[" * 5000 + b"\n")  # a first line that looks like a JSON array, nested past recursion
def test_any_file_gives_documented_findings_at_lines_it_has(tmp_path, data):
    path = tmp_path / "data.jsonl"
    path.write_bytes(data)
    _assert_documented(validate(path), data)


# One format per file, so that every record reaches the example checks (a mix stops at the first other one).
RECORD_LINES = st.sampled_from([CHAT, PREFERENCE, COMPLETION, PLAIN]).flatmap(
    lambda record: st.lists(st.builds(encode, record, st.booleans()), min_size=1, max_size=4))


@fuzz(300)
@given(data=RECORD_LINES.map(lambda lines: b"".join(line + b"\n" for line in lines)))
def test_any_records_give_documented_findings_at_lines_they_have(tmp_path, data):
    path = tmp_path / "data.jsonl"
    path.write_bytes(data)
    _assert_documented(validate(path), data)


# A holdout file (followed by the training lines, so some of it leaks) or a holdout list of records.
HOLDOUT = st.one_of(files(), st.lists(st.one_of(RECORD, JSON), max_size=5))


@fuzz(100)
@given(data=files(), holdout=HOLDOUT)
@example(data=b'{"text": "a"}\n', holdout=b'{"messages": ["a"]}\n{"messages": true}\n'
         b'{"input": [[]], "preferred_output": [], "non_preferred_output": []}\n')  # lines that are no example
def test_any_holdout_gives_documented_findings_at_lines_of_the_training_file(tmp_path, data, holdout):
    path = tmp_path / "data.jsonl"
    path.write_bytes(data)
    if isinstance(holdout, bytes):
        holdout_path = tmp_path / "holdout.jsonl"
        holdout_path.write_bytes(holdout + b"\n" + data)
        holdout = holdout_path
    _assert_documented(validate(path, holdout=holdout), data)


@fuzz(40)
@given(data=files())
def test_reading_in_tiny_chunks_gives_the_same_report(tmp_path, data):
    path = tmp_path / "data.jsonl"
    path.write_bytes(data)
    whole = validate(path)
    with mock.patch.object(reader, "CHUNK", 3):
        assert validate(path) == whole


@fuzz(40)
@given(data=files(), limit=st.integers(1, 40))
def test_every_line_over_the_ceiling_is_skipped_at_its_own_number(tmp_path, data, limit):
    path = tmp_path / "data.jsonl"
    path.write_bytes(data)
    with mock.patch.object(reader, "CHUNK", 4), mock.patch.object(reader, "MAX_LINE_BYTES", limit):
        report = validate(path)
    _assert_documented(report, data)
    pieces = data.split(b"\n")
    sizes = [len(piece) + 1 for piece in pieces[:-1]] + ([len(pieces[-1])] if pieces[-1] else [])
    if not (report.of("TP004") or report.of("TP008")):  # binary or a JSON array: reading stops there
        assert [f["line"] for f in report.of("TP105")] == [n for n, size in enumerate(sizes, 1) if size > limit]


@pytest.mark.skipif(not validate_module._can_fork(), reason="parallel validation forks")
@fuzz(25)
@given(data=files(st.one_of(LINE, st.builds(encode, st.just({"text": "same"}), st.just(True)))))
def test_a_file_checked_in_parallel_spans_gives_the_one_process_findings(tmp_path, data):
    path = tmp_path / "data.jsonl"
    path.write_bytes(data * 3)  # more lines, so each span gets some
    alone = validate(path, workers=1)
    with mock.patch.object(validate_module, "PARALLEL_MIN_BYTES", 0):
        spans = validate(path, workers=3)
    assert (spans.findings, spans.counts, spans.format) == (alone.findings, alone.counts, alone.format)
    assert (spans.stats.examples, spans.stats.total_tokens) == (alone.stats.examples, alone.stats.total_tokens)


VALID_TEXT = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=30).filter(str.strip)
VALID_CHAT = st.builds(
    lambda system, turns, extra: {**extra, "messages": ([{"role": "system", "content": system}] if system else [])
                                  + [{"role": role, "content": text} for pair in turns
                                     for role, text in zip(("user", "assistant"), pair)]},
    st.one_of(st.none(), VALID_TEXT), st.lists(st.tuples(VALID_TEXT, VALID_TEXT), min_size=1, max_size=3),
    st.fixed_dictionaries({}, optional={"metadata": st.dictionaries(TEXT, SCALARS, max_size=2), "extra": JSON}),
)


@fuzz(40)
@given(records=st.lists(VALID_CHAT, min_size=1, max_size=6), ascii_only=st.booleans(), crlf=st.booleans(),
       bom=st.booleans())
def test_a_file_that_validates_ok_loads_as_the_same_examples(tmp_path, records, ascii_only, crlf, bom):
    path = tmp_path / "data.jsonl"
    lines = [encode(record, ascii_only) for record in records]
    path.write_bytes((reader.BOM if bom else b"") + b"".join(line + (b"\r\n" if crlf else b"\n") for line in lines))
    report = validate(path)
    if not report.ok:
        return
    examples = load_examples(path, strict=True)
    assert len(examples) == report.stats.examples
    again = tmp_path / "again.jsonl"
    again.write_text("".join(json.dumps(ex.record, ensure_ascii=False) + "\n" for ex in examples), encoding="utf-8")
    assert [ex.record for ex in load_examples(again, strict=True)] == [ex.record for ex in examples]
    assert validate(again).stats.total_tokens == report.stats.total_tokens


# -- backend options, the CLI's -o and hyperparameters ------------------------------------------------------
FIELDS = sorted({name for backend in registry.names()
                 for name in registry.provider_class(backend).Options.model_fields})
OPTION_KEY = st.one_of(st.sampled_from(FIELDS), TEXT, st.integers())
OPTION_VALUE = st.one_of(JSON, st.sampled_from(["inf", "-1", "0", "1e999", "true", "yes", "nf4", "all-linear",
                                                "/tmp", "~", "~no-such-user-here", "null"]))


@pytest.mark.parametrize("provider", registry.names())
@fuzz(60)
@given(values=st.dictionaries(OPTION_KEY, OPTION_VALUE, max_size=3))
@example(values={5: "x"})  # a key that is not text
def test_any_options_are_an_options_object_or_a_config_error(provider, values):
    options_class = registry.provider_class(provider).Options
    try:
        options = options_class.parse(values, backend=provider)
    except ConfigError:
        return
    assert isinstance(options, options_class)


def test_a_home_under_an_unknown_user_is_a_config_error_naming_the_option():
    with pytest.raises(ConfigError, match="home"):
        registry.provider_class("local").Options.parse({"home": "~no-such-user-here/jobs"})


@fuzz(150)
@given(values=st.dictionaries(st.one_of(st.sampled_from(list(Hyperparameters.model_fields)), TEXT),
                              OPTION_VALUE, max_size=4))
def test_any_hyperparameters_are_valid_or_a_validation_error(values):
    try:
        parameters = Hyperparameters.model_validate(values)
    except ValidationError:
        return
    assert set(parameters.given()) <= set(values)


# Text a shell can pass: no NUL, and no lone surrogate (pytest's capture cannot print one; a terminal can).
ARGV_TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12)
PLAUSIBLE = st.sampled_from(["1", "2.5", "0", "-1", "true", "no", "null", "http://127.0.0.1:9", "proj_1", "[]", "{}"])
OPTION_ARG = st.one_of(
    st.builds("{}={}".format, st.sampled_from(sorted(registry.provider_class("openai").Options.model_fields)),
              PLAUSIBLE),
    st.builds("{}={}".format, st.one_of(st.sampled_from(FIELDS), ARGV_TEXT),
              st.one_of(ARGV_TEXT, st.builds(json.dumps, JSON), st.integers(1, 5000).map(lambda n: "[" * n))),
    ARGV_TEXT,
)
FLAGS = [f"--{name.replace('_', '-')}" for name in Hyperparameters.model_fields]
HYPERPARAMETER_FLAG = st.tuples(st.sampled_from(FLAGS), st.one_of(st.integers(0, 120).map(str),
                                                                  st.floats(0, 1.5).map(str), ARGV_TEXT,
                                                                  st.builds(str, NUMBERS)))


@fuzz(60)
@given(options=st.lists(OPTION_ARG, max_size=2), flags=st.lists(HYPERPARAMETER_FLAG, max_size=2))
@example(options=["base_url=" + "[" * 5000], flags=[])  # nested past the JSON parser's recursion
def test_estimate_with_any_options_and_hyperparameters_exits_0_or_2_without_a_traceback(capsys, monkeypatch,
                                                                                       options, flags):
    monkeypatch.setattr(sys, "argv", ["tuneproxy", "estimate", str(FIXTURES / "datasets" / "sample.jsonl"),
                                      "-p", "openai", "-m", "gpt-4o-mini-2024-07-18",
                                      *[arg for option in options for arg in ("-o", option)],
                                      *[arg for flag in flags for arg in flag]])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    err = capsys.readouterr().err
    assert exit_info.value.code in (0, 2), err
    assert "internal error" not in err and "Traceback" not in err
