"""The ledger: versioned schema, intents before paid calls, jobs, events, deployments, costs."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from tuneproxy.contract import CostEstimate, Deployment, JobEvent, JobRecord, JobStatus, Quantity
from tuneproxy.errors import JobNotFound, TuneproxyError
from tuneproxy.ledger import MIGRATIONS, DeploymentNotFound, Ledger
from tuneproxy.paths import home

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)


class FakeClock:
    """A clock tests move by hand."""

    def __init__(self, start: dt.datetime = T0) -> None:
        self.now = start

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


def record(status=JobStatus.RUNNING, **over) -> JobRecord:
    data = dict(provider="together", job_id="ft-123", base_model="llama", status=status, raw_status=status.value,
                created_at=T0)
    data.update(over)
    return JobRecord(**data)


def deployment(deployment_id="dep-1", state="ready", **over) -> Deployment:
    data = dict(provider="fireworks", deployment_id=deployment_id, model="acct/llama-ft", state=state,
                raw_state=state.upper(), hardware="A100", usd_per_hour=2.9)
    data.update(over)
    return Deployment(**data)


# -- schema -------------------------------------------------------------------------------------------

def test_new_ledger_is_at_the_latest_schema_in_wal_mode(isolated_home):
    ledger = Ledger()
    assert ledger.path == isolated_home / "state.db"
    assert ledger.version == len(MIGRATIONS) == 3
    assert ledger.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_home_expands_a_tilde_in_tuneproxy_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("TUNEPROXY_HOME", "~/state-here")
    assert home() == tmp_path / "state-here"
    monkeypatch.delenv("TUNEPROXY_HOME")
    assert home() == tmp_path / ".tuneproxy"


def test_a_ledger_from_a_newer_tuneproxy_is_refused_with_advice(tmp_path):
    path = tmp_path / "state.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.close()
    with pytest.raises(TuneproxyError, match="upgrade tuneproxy"):
        Ledger(path)


def test_migration_1_is_unchanged_because_users_databases_are_at_schema_1():
    assert hashlib.sha256(MIGRATIONS[0].encode()).hexdigest() == (
        "052dae2e6164213ad91c552e2d5523fc4ab91cbb38b7eb5fbcbc9163b692ab28")


def test_a_semicolon_inside_a_string_does_not_split_a_migration_statement():
    script = "CREATE TABLE t (x TEXT DEFAULT 'a;b');\nINSERT INTO t VALUES ('c;d');\n"
    assert [s.strip() for s in Ledger._statements(script)] == [
        "CREATE TABLE t (x TEXT DEFAULT 'a;b');", "INSERT INTO t VALUES ('c;d');"]


def _schema_1_database(path: Path) -> None:
    """A state.db as tuneproxy 0.1 left it, with one row of each kind it wrote."""
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0])
    db.execute("PRAGMA user_version = 1")
    old_record = {"provider": "openai", "job_id": "ftjob-abc", "model": "gpt-4o-mini-2024-07-18",
                  "status": "succeeded", "raw_status": "succeeded",
                  "fine_tuned_model": "ft:gpt-4o-mini-2024-07-18:acme::xyz", "created_at": "2026-10-01T00:00:00Z",
                  "finished_at": "2026-10-01T01:00:00Z", "error": None, "trained_tokens": 120000,
                  "billed_usd": 0.36, "intent_id": "i1", "detail": {}}
    db.execute("INSERT INTO submissions VALUES ('i1', '2026-10-01T00:00:00+00:00', 'openai', "
               "'gpt-4o-mini-2024-07-18', 'fp1', ?, 'submitted', 'ftjob-abc', NULL)",
               (json.dumps({"hyperparameters": {"epochs": 3}}),))
    db.execute("INSERT INTO jobs VALUES ('openai', 'ftjob-abc', 'i1', 'gpt-4o-mini-2024-07-18', 'succeeded', "
               "'succeeded', 'ft:gpt-4o-mini-2024-07-18:acme::xyz', '2026-10-01T00:00:00+00:00', "
               "'2026-10-01T01:00:00+00:00', '2026-10-01T01:00:05+00:00', NULL, 120000, 0.36, ?)",
               (json.dumps(old_record),))
    db.execute("INSERT INTO events VALUES ('openai', 'ftjob-abc', 'ev1', '2026-10-01T00:10:00+00:00', 'info', "
               "'Step 1/10', 1, NULL, 2.5, NULL)")
    db.execute("INSERT INTO costs (id, recorded_at, provider, intent_id, job_id, kind, usd, tokens, basis) VALUES "
               "(3, '2026-10-01T00:00:00+00:00', 'openai', 'i1', NULL, 'estimate', 0.4, 130000, 'table'), "
               "(4, '2026-10-01T01:00:06+00:00', 'openai', 'i1', 'ftjob-abc', 'billed', 0.36, 120000, 'billed'), "
               "(5, '2026-10-01T01:00:07+00:00', 'openai', NULL, 'ftjob-x', 'billed', NULL, NULL, 'unknown')")
    db.commit()
    db.close()


def test_a_schema_1_ledger_is_migrated_with_every_row_kept(tmp_path):
    path = tmp_path / "state.db"
    _schema_1_database(path)
    ledger = Ledger(path)
    assert ledger.version == len(MIGRATIONS)

    sub = ledger.submission("i1")
    assert (sub.state, sub.job_id, sub.request, sub.options) == (
        "submitted", "ftjob-abc", {"hyperparameters": {"epochs": 3}}, {})

    job = ledger.job("ftjob-abc")
    assert job.base_model == "gpt-4o-mini-2024-07-18"
    assert job.tuned_model == "ft:gpt-4o-mini-2024-07-18:acme::xyz"
    assert job.trained_tokens == 120000 and job.billed_usd == 0.36 and job.status is JobStatus.SUCCEEDED
    assert [e.train_loss for e in ledger.events("openai", "ftjob-abc")] == [2.5]

    costs = ledger.costs()
    assert [(c.id, c.kind, c.usd, c.quantity, c.unit, c.model) for c in costs] == [
        (3, "estimate", 0.4, 130000, "training_tokens", "gpt-4o-mini-2024-07-18"),
        (4, "billed", 0.36, 120000, "training_tokens", "gpt-4o-mini-2024-07-18"),
        (5, "billed", None, None, None, None),
    ]
    assert costs[1].recorded_at == dt.datetime(2026, 10, 1, 1, 0, 6, tzinfo=dt.timezone.utc)
    assert ledger.spend() == {"openai": 0.36}
    # new rows continue after the old ids, and the new kinds pass the rebuilt CHECK
    ledger.db.execute("INSERT INTO costs (recorded_at, provider, kind, basis) "
                      "VALUES ('2026-11-01T00:00:00+00:00', 'p', 'inference', 'b')")
    assert ledger.costs()[-1].id == 6
    ledger.save_deployment(deployment())
    assert [d.deployment_id for d in ledger.deployments()] == ["dep-1"]


def test_a_failing_migration_leaves_the_ledger_at_its_old_schema(tmp_path, monkeypatch):
    path = tmp_path / "state.db"
    _schema_1_database(path)
    monkeypatch.setattr("tuneproxy.ledger.MIGRATIONS", [MIGRATIONS[0], MIGRATIONS[1] + "SELECT * FROM nowhere;"])
    with pytest.raises(TuneproxyError, match="from schema 1 to 2 .*nowhere.*left unchanged"):
        Ledger(path)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    assert db.execute("SELECT tokens FROM costs WHERE id = 4").fetchone() == (120000,)
    assert db.execute("SELECT name FROM sqlite_master WHERE name IN ('costs_v2', 'deployments')").fetchall() == []


# -- submissions --------------------------------------------------------------------------------------

def test_same_request_gets_same_intent_id_on_any_machine_until_it_is_made_again(tmp_path):
    ledger = Ledger(tmp_path / "a.db")
    first, fresh = ledger.claim_intent("together", "m", "fp1", {"epochs": 3})
    other, _ = Ledger(tmp_path / "b.db").claim_intent("together", "m", "fp1", {"epochs": 3})
    assert fresh and first.intent_id == other.intent_id
    ledger.mark_submission(first.intent_id, "submitted", job_id="ft-1")
    again, fresh_again = ledger.claim_intent("together", "m", "fp1", {"epochs": 3})
    assert fresh_again and again.intent_id != first.intent_id


def test_a_pending_intent_is_claimed_again_until_it_is_marked_submitted():
    ledger = Ledger()
    sub, fresh = ledger.claim_intent("openai", "gpt", "fp", {"epochs": 1}, {"base_url": "https://proxy"})
    assert fresh and sub.state == "pending" and sub.options == {"base_url": "https://proxy"}
    same, fresh2 = ledger.claim_intent("openai", "gpt", "fp", {"epochs": 1}, {"base_url": "https://proxy"})
    assert (same.intent_id, fresh2) == (sub.intent_id, False)
    assert same.options == {"base_url": "https://proxy"}
    ledger.mark_submission(sub.intent_id, "submitted", job_id="ftjob-1")
    new, fresh3 = ledger.claim_intent("openai", "gpt", "fp", {"epochs": 1})
    assert fresh3 and new.intent_id != sub.intent_id
    assert ledger.submission(sub.intent_id).job_id == "ftjob-1"


def test_an_uncertain_intent_is_claimed_again_and_failed_one_is_not():
    ledger = Ledger()
    sub, _ = ledger.claim_intent("openai", "gpt", "fp", {})
    ledger.mark_submission(sub.intent_id, "uncertain", error="no answer")
    again, fresh = ledger.claim_intent("openai", "gpt", "fp", {})
    assert (again.intent_id, again.state, fresh) == (sub.intent_id, "uncertain", False)
    ledger.mark_submission(sub.intent_id, "failed", error="refused")
    assert ledger.claim_intent("openai", "gpt", "fp", {})[1] is True


def test_an_intent_of_the_same_request_to_another_provider_is_not_adopted():
    ledger = Ledger()
    ledger.claim_intent("openai", "gpt", "fp", {})
    sub, fresh = ledger.claim_intent("together", "llama", "fp", {})
    assert fresh and sub.provider == "together"


def test_an_intent_id_already_taken_is_skipped_not_raised():
    ledger = Ledger()
    first, _ = ledger.claim_intent("openai", "gpt", "fp", {})
    ledger.mark_submission(first.intent_id, "submitted", job_id="j1")
    # a row added, then removed, by hand: the count of earlier submissions names an id already taken
    ledger.db.execute("INSERT INTO submissions (intent_id, created_at, provider, model, fingerprint, request, "
                      "state) VALUES ('x', 't', 'openai', 'gpt', 'fp', '{}', 'submitted')")
    second, _ = ledger.claim_intent("openai", "gpt", "fp", {})
    ledger.mark_submission(second.intent_id, "submitted", job_id="j2")
    ledger.db.execute("DELETE FROM submissions WHERE intent_id = 'x'")
    third, fresh = ledger.claim_intent("openai", "gpt", "fp", {})
    assert fresh and third.intent_id not in (first.intent_id, second.intent_id)


# No ledger-level key test: the ledger is never given a key, so such a test could not fail. The keys are
# checked where they could leak — every file under the home after real fits with real-shaped keys
# (tests/test_fit_end_to_end.py) and the CLI's output (tests/test_cli.py).


# -- jobs and events ----------------------------------------------------------------------------------

def test_job_state_is_updated_in_place_and_found_by_prefix():
    ledger = Ledger()
    ledger.save_job(record())
    ledger.save_job(record(JobStatus.SUCCEEDED, tuned_model="acct/llama-ft"))
    assert len(ledger.jobs()) == 1
    found = ledger.job("ft-1")
    assert found.status is JobStatus.SUCCEEDED and found.tuned_model == "acct/llama-ft"
    row = ledger.db.execute("SELECT model, fine_tuned_model FROM jobs").fetchone()
    assert tuple(row) == ("llama", "acct/llama-ft")


def test_unknown_job_says_how_to_list_jobs():
    with pytest.raises(JobNotFound, match="tuneproxy jobs list"):
        Ledger().job("nope")


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


def test_events_are_stored_once_and_the_last_id_is_the_cursor():
    ledger = Ledger()
    events = [JobEvent(id=f"e{i}", time=T0, message=f"step {i}", step=i, train_loss=1.0 / (i + 1)) for i in range(3)]
    assert ledger.save_events("together", "ft-123", events) == 3
    assert ledger.save_events("together", "ft-123", events[1:]) == 0
    assert ledger.last_event_id("together", "ft-123") == "e2"
    assert [e.step for e in ledger.events("together", "ft-123")] == [0, 1, 2]


# -- costs --------------------------------------------------------------------------------------------

def test_an_estimate_keeps_its_range_quantity_and_price_source():
    ledger = Ledger()
    ledger.record_estimate(CostEstimate(
        provider="together", model="llama", quantities=[Quantity(kind="training_tokens", amount=4000)],
        usd=1.5, usd_low=1.2, usd_high=1.9, basis="table", price_source="together.ai/pricing 2026-10-01"),
        "intent-1")
    ledger.record_estimate(CostEstimate(
        provider="replicate", model="flux", quantities=[Quantity(kind="hardware_seconds", amount=900)],
        basis="duration model", authoritative=True))
    tokens, seconds = ledger.costs()
    assert (tokens.kind, tokens.intent_id, tokens.model, tokens.usd, tokens.usd_low, tokens.usd_high) == (
        "estimate", "intent-1", "llama", 1.5, 1.2, 1.9)
    assert (tokens.quantity, tokens.unit, tokens.price_source, tokens.authoritative) == (
        4000, "training_tokens", "together.ai/pricing 2026-10-01", False)
    assert (seconds.quantity, seconds.unit, seconds.usd, seconds.authoritative) == (
        900, "hardware_seconds", None, True)
    assert ledger.costs(intent_id="intent-1") == [tokens]


def test_the_billed_row_is_updated_in_place_when_the_figure_changes():
    clock = FakeClock()
    ledger = Ledger(clock=clock)
    running = record(JobStatus.RUNNING, billable=[Quantity(kind="training_tokens", amount=500)])
    assert ledger.record_billed(running, usd=0.5, basis="priced from tokens so far")
    clock.advance(60)
    done = record(JobStatus.SUCCEEDED, billable=[Quantity(kind="training_tokens", amount=1000)])
    assert ledger.record_billed(done, usd=1.25, basis="billed", authoritative=True)
    clock.advance(60)
    assert not ledger.record_billed(done, usd=1.25, basis="billed", authoritative=True)
    (row,) = ledger.costs(job_id="ft-123")
    assert (row.kind, row.usd, row.quantity, row.unit, row.basis, row.authoritative, row.model) == (
        "billed", 1.25, 1000, "training_tokens", "billed", True, "llama")
    assert row.recorded_at == T0 + dt.timedelta(seconds=60)
    assert ledger.spend() == {"together": 1.25}


def test_job_costs_are_its_estimates_then_its_bill():
    ledger = Ledger()
    ledger.record_estimate(CostEstimate(provider="together", model="llama", usd=1.5, basis="table"), "i-9")
    ledger.record_estimate(CostEstimate(provider="together", model="llama", usd=9.0, basis="table"), "i-other")
    ledger.record_billed(record(JobStatus.SUCCEEDED, intent_id="i-9"), usd=1.25, basis="billed")
    assert [(c.kind, c.usd) for c in ledger.job_costs(record(intent_id="i-9"))] == [
        ("estimate", 1.5), ("billed", 1.25)]


# -- deployments --------------------------------------------------------------------------------------

def test_deployments_round_trip_newest_first_and_stopped_ones_are_not_active():
    clock = FakeClock()
    ledger = Ledger(clock=clock)
    ledger.save_deployment(deployment("dep-old", created_at=T0 - dt.timedelta(days=1)))
    clock.advance(10)
    ledger.save_deployment(deployment("dep-new", state="creating"))
    assert [d.deployment_id for d in ledger.deployments()] == ["dep-new", "dep-old"]
    assert ledger.deployment("dep-n") == deployment("dep-new", state="creating")

    clock.advance(10)
    ledger.save_deployment(deployment("dep-old", state="stopped", created_at=T0 - dt.timedelta(days=1)))
    assert [d.deployment_id for d in ledger.deployments()] == ["dep-new"]
    assert [(d.deployment_id, d.state) for d in ledger.deployments(active_only=False)] == [
        ("dep-new", "creating"), ("dep-old", "stopped")]
    clock.advance(10)
    ledger.save_deployment(deployment("dep-old", state="stopped"))  # a later poll keeps when it stopped
    row = ledger.db.execute("SELECT created_at, deleted_at FROM deployments WHERE deployment_id = 'dep-old'")
    assert tuple(row.fetchone()) == ((T0 - dt.timedelta(days=1)).isoformat(), (T0 + dt.timedelta(seconds=20))
                                     .isoformat())


def test_an_unknown_or_ambiguous_deployment_is_a_usage_error():
    ledger = Ledger()
    ledger.save_deployment(deployment("dep-1"))
    ledger.save_deployment(deployment("dep-2"))
    with pytest.raises(DeploymentNotFound, match="start of 2 deployments") as ambiguous:
        ledger.deployment("dep-")
    assert ambiguous.value.exit_code == 2 and isinstance(ambiguous.value, TuneproxyError)
    with pytest.raises(DeploymentNotFound, match="No deployment"):
        ledger.deployment("dep-1", provider="together")


# -- clock --------------------------------------------------------------------------------------------

def test_every_timestamp_the_ledger_writes_comes_from_its_clock():
    clock = FakeClock(dt.datetime(2031, 5, 6, 7, 8, 9, tzinfo=dt.timezone.utc))
    ledger = Ledger(clock=clock)
    sub, _ = ledger.claim_intent("openai", "gpt", "fp", {})
    ledger.record_estimate(CostEstimate(provider="openai", model="gpt", usd=1.0, basis="table"), sub.intent_id)
    ledger.save_job(record(created_at=None))
    ledger.save_deployment(deployment())
    stamp = "2031-05-06T07:08:09+00:00"
    assert sub.created_at == ledger.submission(sub.intent_id).created_at == stamp
    assert [c.recorded_at for c in ledger.costs()] == [clock.now]
    assert ledger.db.execute("SELECT updated_at FROM jobs").fetchone()[0] == stamp
    assert tuple(ledger.db.execute("SELECT created_at, updated_at FROM deployments").fetchone()) == (stamp, stamp)


def test_spend_counts_a_job_billed_twice_by_racing_schema_1_clients_once(tmp_path):
    path = tmp_path / "state.db"
    _schema_1_database(path)
    db = sqlite3.connect(path)
    db.execute("INSERT INTO costs (id, recorded_at, provider, intent_id, job_id, kind, usd, tokens, basis) VALUES "
               "(6, '2026-10-01T01:00:08+00:00', 'openai', 'i1', 'ftjob-abc', 'billed', 0.36, 120000, 'billed')")
    db.commit()
    db.close()
    ledger = Ledger(path)
    assert len([c for c in ledger.costs(job_id="ftjob-abc") if c.kind == "billed"]) == 2  # both rows kept
    assert ledger.spend() == {"openai": 0.36}


def test_a_pending_intent_claimed_by_a_live_ledger_is_in_progress_until_released(tmp_path):
    from tuneproxy.ledger import SubmissionInProgress

    first, second = Ledger(tmp_path / "state.db"), Ledger(tmp_path / "state.db")
    sub, fresh = first.claim_intent("openai", "gpt", "fp", {})
    with pytest.raises(SubmissionInProgress, match=sub.intent_id):
        second.claim_intent("openai", "gpt", "fp", {})
    first.release_claim(sub.intent_id)  # e.g. its fit was interrupted before any answer came
    again, fresh = second.claim_intent("openai", "gpt", "fp", {})
    assert (again.intent_id, fresh) == (sub.intent_id, False)


def test_a_bill_in_gpu_hours_keeps_its_quantity_and_unit():
    ledger = Ledger()
    done = record(JobStatus.SUCCEEDED, provider="local", job_id="ljob-1",
                  billable=[Quantity(kind="gpu_hours", amount=0.5, hardware="cpu")])
    ledger.record_billed(done, usd=1.0, basis="0.5 GPU-hours × $2/hour")
    (row,) = ledger.costs(job_id="ljob-1")
    assert (row.quantity, row.unit, row.usd) == (0.5, "gpu_hours", 1.0)
