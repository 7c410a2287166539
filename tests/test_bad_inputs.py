"""Every malformed dataset under fixtures/datasets/bad/ gets its expected codes at the right lines."""

from __future__ import annotations

import json

import pytest

from tests.conftest import FIXTURES
from tuneproxy import registry
from tuneproxy.dataset import validate
from tuneproxy.dataset.findings import CODES

BAD = FIXTURES / "datasets" / "bad"
EXPECTED = json.loads((BAD / "expected.json").read_text())


def _validate(name: str):
    provider = EXPECTED[name]["provider"]
    if provider:
        caps = registry.provider_class(provider).CAPABILITIES
        return validate(BAD / name, rules=caps.rules, service=caps.display_name)
    return validate(BAD / name)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_file_reports_expected_codes_at_lines(name):
    report = _validate(name)
    found = {(f["code"], f["line"]) for f in report.findings}
    for want in EXPECTED[name]["expect"]:
        assert (want["code"], want["line"]) in found, f"{name}: wanted {want}, got {sorted(found)}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_verdict_follows_severity_of_expected_codes(name):
    report = _validate(name)
    expects_error = any(
        report.of(w["code"]) and report.of(w["code"])[0]["severity"] == "error" for w in EXPECTED[name]["expect"]
    )
    assert report.ok is not expects_error


def test_every_code_has_a_bad_fixture_or_a_generated_case():
    covered = {w["code"] for case in EXPECTED.values() for w in case["expect"]}
    generated = {"TP007", "TP104", "TP105", "TP505", "TP506", "TP503"}  # built in tests: sizes too big to commit
    assert set(CODES) - covered - generated == set()


def test_ten_megabyte_single_line_is_reported_and_too_long_for_context(tmp_path):
    path = tmp_path / "huge.jsonl"
    big = "word " * 2_000_000
    path.write_text(json.dumps({"messages": [{"role": "user", "content": big},
                                             {"role": "assistant", "content": "ok"}]}) + "\n")
    assert path.stat().st_size > 10_000_000
    caps = registry.provider_class("openai").CAPABILITIES
    report = validate(path, rules=caps.rules, service=caps.display_name, model="gpt-4o-mini")
    assert report.of("TP104")[0]["line"] == 1
    too_long = report.of("TP505")
    assert too_long and too_long[0]["line"] == 1 and "65,536" in too_long[0]["message"]
    assert not report.ok


def test_a_million_lines_stream_through_with_exact_counts(tmp_path):
    path = tmp_path / "million.jsonl"
    with path.open("w") as handle:
        for i in range(1_000_000):
            handle.write(f'{{"text":"n{i}"}}\n')
    report = validate(path)
    assert report.stats.examples == 1_000_000
    assert report.ok
    assert "TP504" not in report.counts


def test_file_over_the_upload_limit_is_an_error(tmp_path):
    from tuneproxy.contract import DatasetRules

    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "hello"}\n' * 300)
    rules = DatasetRules(formats=frozenset({"text"}), max_file_bytes=1000, upload_path="the test upload")
    report = validate(path, rules=rules, service="Test")
    assert report.of("TP007") and "1,000" in report.of("TP007")[0]["message"]


def test_more_examples_than_the_service_accepts_is_an_error(tmp_path):
    from tuneproxy.contract import DatasetRules

    rules = DatasetRules(formats=frozenset({"text"}), max_examples=5)
    report = validate([{"text": f"t{i}"} for i in range(6)], rules=rules, service="Test")
    assert report.of("TP503") and not report.ok


def test_holdout_example_also_in_training_is_flagged_after_case_and_space_folding(tmp_path):
    train = [{"messages": [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": f"A{i}"}]}
             for i in range(5)]
    holdout = tmp_path / "holdout.jsonl"
    holdout.write_text(json.dumps({"messages": [{"role": "user", "content": "  q3 "},
                                                {"role": "assistant", "content": "a3"}]}) + "\n")
    report = validate(train, holdout=holdout)
    leaks = report.of("TP506")
    assert [f["line"] for f in leaks] == [4]
    assert "holdout line 1" in leaks[0]["message"]


def test_findings_per_code_are_capped_but_all_counted(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("not json\n" * 500)
    report = validate(path, keep=10)
    assert report.counts["TP101"] == 500
    assert len(report.of("TP101")) == 10


def test_docs_table_of_codes_matches_the_code_list():
    from tests.conftest import ROOT
    from tuneproxy.dataset.findings import codes_markdown

    assert (ROOT / "docs" / "validation-codes.md").read_text() == codes_markdown()
