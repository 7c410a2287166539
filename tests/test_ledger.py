"""The ledger: versioned schema, intents before paid calls, jobs, events, costs."""

from __future__ import annotations

import datetime as dt
import sqlite3

import pytest

from tuneproxy.contract import CostEstimate, JobEvent, JobRecord, JobStatus
from tuneproxy.errors import JobNotFound, TuneproxyError
from tuneproxy.ledger import MIGRATIONS, Ledger


def record(status=JobStatus.RUNNING, **over) -> JobRecord:
    data = dict(provider="together", job_id="ft-123", model="llama", status=status, raw_status=status.value,
                created_at=dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc))
    data.update(over)
    return JobRecord(**data)


def test_new_ledger_is_at_the_latest_schema_in_wal_mode(isolated_home):
    ledger = Ledger()
    assert ledger.path == isolated_home / "state.db"
    assert ledger.version == len(MIGRATIONS)
    assert ledger.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_ledger_from_a_newer_tuneproxy_is_refused_with_advice(tmp_path):
    path = tmp_path / "state.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.close()
    with pytest.raises(TuneproxyError, match="upgrade tuneproxy"):
        Ledger(path)


def test_same_request_gets_same_intent_id_until_it_is_made_again(tmp_path):
    ledger = Ledger(tmp_path / "a.db")
    first = ledger.record_intent("together", "m", "fp1", {"epochs": 3})
    other = Ledger(tmp_path / "b.db").record_intent("together", "m", "fp1", {"epochs": 3})
    again = ledger.record_intent("together", "m", "fp1", {"epochs": 3})
    assert first.intent_id == other.intent_id
    assert again.intent_id != first.intent_id


def test_pending_intent_is_found_until_it_is_marked_submitted():
    ledger = Ledger()
    sub = ledger.record_intent("openai", "gpt", "fp", {})
    assert ledger.unfinished_intent("openai", "fp").intent_id == sub.intent_id
    ledger.mark_submission(sub.intent_id, "submitted", job_id="ftjob-1")
    assert ledger.unfinished_intent("openai", "fp") is None
    assert ledger.submission(sub.intent_id).job_id == "ftjob-1"


def test_job_state_is_updated_in_place_and_found_by_prefix():
    ledger = Ledger()
    ledger.save_job(record())
    ledger.save_job(record(JobStatus.SUCCEEDED, fine_tuned_model="acct/llama-ft"))
    assert len(ledger.jobs()) == 1
    found = ledger.job("ft-1")
    assert found.status is JobStatus.SUCCEEDED and found.fine_tuned_model == "acct/llama-ft"


def test_unknown_job_says_how_to_list_jobs():
    with pytest.raises(JobNotFound, match="tuneproxy jobs list"):
        Ledger().job("nope")


def test_events_are_stored_once_and_the_last_id_is_the_cursor():
    ledger = Ledger()
    t = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
    events = [JobEvent(id=f"e{i}", time=t, message=f"step {i}", step=i, train_loss=1.0 / (i + 1)) for i in range(3)]
    assert ledger.save_events("together", "ft-123", events) == 3
    assert ledger.save_events("together", "ft-123", events[1:]) == 0
    assert ledger.last_event_id("together", "ft-123") == "e2"
    assert [e.step for e in ledger.events("together", "ft-123")] == [0, 1, 2]


def test_billed_cost_is_recorded_once_per_job_and_summed_as_spend():
    ledger = Ledger()
    ledger.record_estimate(CostEstimate(provider="together", model="m", usd=1.5, billable_tokens=10, basis="table"))
    done = record(JobStatus.SUCCEEDED, billed_usd=1.25, trained_tokens=1000)
    ledger.record_billed(done, "billed")
    ledger.record_billed(done, "billed")
    kinds = [c["kind"] for c in ledger.costs()]
    assert kinds == ["estimate", "billed"]
    assert ledger.spend() == {"together": 1.25}


def test_ledger_stores_no_api_key(tmp_path):
    ledger = Ledger(tmp_path / "s.db")
    ledger.record_intent("openai", "gpt", "fp", {"hyperparameters": {"epochs": 1}})
    ledger.close()
    assert b"sk-" not in (tmp_path / "s.db").read_bytes()


def test_job_prefix_must_name_exactly_one_job_and_wildcards_are_literal():
    ledger = Ledger()
    ledger.save_job(record(job_id="ft-abc1"))
    ledger.save_job(record(job_id="ft-abc2"))
    assert ledger.job("ft-abc2").job_id == "ft-abc2"
    with pytest.raises(JobNotFound, match="start of 2 jobs"):
        ledger.job("ft-abc")
    for pattern in ("%", "_", "ft-%", "  "):
        with pytest.raises(JobNotFound):
            ledger.job(pattern)
