"""One bad row in the ledger (edited by hand, written by a broken build) hides nothing else: listings show
the good rows and name the bad one, asking for it by id is a clear usage error, and the file is never
changed by reading it. Two processes writing one job's events at once lose none of them."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import sqlite3
import sys
import warnings

import pytest

from tuneproxy import cli
from tuneproxy.contract import JobEvent, JobRecord, JobStatus
from tuneproxy.ledger import Ledger, LedgerRowWarning, UnreadableRow

T0 = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.timezone.utc)
GOOD = "ft-good-1"
BAD = "ft-bad-1"


def good_record(job_id: str = GOOD) -> JobRecord:
    return JobRecord(provider="together", job_id=job_id, base_model="llama", status=JobStatus.RUNNING,
                     raw_status="running", created_at=T0, intent_id="intent-good")


def record_with(**changes) -> str:
    return json.dumps({**good_record(BAD).model_dump(mode="json"), **changes})


# Ways a jobs row's record (the column every reader goes by) can be broken.
DAMAGE = {
    "unknown status": lambda: record_with(status="exploded"),
    "truncated JSON": lambda: good_record(BAD).model_dump_json()[:40],
    "garbage timestamp": lambda: record_with(created_at="the day before yesterday"),
    "number as text": lambda: record_with(billed_usd="a lot"),
    "not an object": lambda: "[1, 2, 3]",
}


@pytest.fixture
def ledger_path(isolated_home):
    """A ledger with one good job (with an estimate and an event), closed: the CLI opens it afresh."""
    ledger = Ledger()
    ledger.save_job(good_record())
    ledger.db.execute("INSERT INTO costs (recorded_at, provider, intent_id, job_id, kind, usd, basis) VALUES "
                      "(?, 'together', 'intent-good', ?, 'estimate', 1.5, 'the catalogue')", (T0.isoformat(), GOOD))
    ledger.save_events("together", GOOD, [JobEvent(id="ev-1", time=T0, message="started")])
    ledger.close()
    return isolated_home / "state.db"


def insert_job(path, job_id: str, record: str, status: str = "running", text_as_bytes: bool = False) -> None:
    db = sqlite3.connect(path)
    value = "CAST(? AS TEXT)" if text_as_bytes else "?"
    db.execute("INSERT INTO jobs (provider, job_id, model, status, raw_status, created_at, updated_at, record) "
               f"VALUES ('together', ?, 'llama', ?, 'x', ?, ?, {value})",
               (job_id, status, T0.isoformat(), T0.isoformat(), record))
    db.commit()
    db.close()


def execute(path, sql: str, *args) -> None:
    db = sqlite3.connect(path)
    db.execute(sql, args)
    db.commit()
    db.close()


def run(capsys, *args: str) -> tuple[int, str, str]:
    """The CLI in this process: exit code, stdout, and stderr with any warning it raised (shown either by
    the CLI itself or, left to Python, recorded here)."""
    sys.argv = ["tuneproxy", *args]
    with warnings.catch_warnings(record=True) as caught, pytest.raises(SystemExit) as exit_info:
        warnings.simplefilter("always")
        cli.main()
    out, err = capsys.readouterr()
    shown = [str(w.message) for w in caught if issubclass(w.category, LedgerRowWarning)]
    return exit_info.value.code, out, "\n".join([err, *shown])


def assert_clean(err: str) -> None:
    assert "Traceback" not in err and "internal error" not in err


@pytest.mark.parametrize("damage", DAMAGE)
def test_jobs_list_shows_the_good_jobs_and_names_a_bad_row_with_how_to_delete_it(capsys, ledger_path, damage):
    insert_job(ledger_path, BAD, DAMAGE[damage]())
    before = ledger_path.read_bytes()
    code, out, err = run(capsys, "jobs", "list")
    assert code == 0 and GOOD in out and BAD not in out
    assert BAD in err and "DELETE FROM jobs WHERE provider = 'together' AND job_id = 'ft-bad-1'" in err
    assert_clean(err)
    assert ledger_path.read_bytes() == before


def test_a_row_whose_bytes_are_not_utf8_is_named_like_any_other_bad_row(capsys, ledger_path):
    insert_job(ledger_path, BAD, b"\x80\xff{not text}", text_as_bytes=True)
    code, out, err = run(capsys, "jobs", "list")
    assert code == 0 and GOOD in out and BAD in err
    assert_clean(err)


def test_jobs_list_json_prints_only_the_good_rows_and_keeps_the_warning_off_stdout(capsys, ledger_path):
    insert_job(ledger_path, BAD, DAMAGE["unknown status"]())
    code, out, err = run(capsys, "jobs", "list", "--json")
    assert code == 0 and [job["job_id"] for job in json.loads(out)] == [GOOD]
    assert BAD in err and BAD not in out


@pytest.mark.parametrize("offline", [True, False], ids=["offline", "refreshed"])
def test_jobs_show_of_a_bad_row_is_a_usage_error_that_says_how_to_look_and_delete(capsys, ledger_path, offline):
    insert_job(ledger_path, BAD, DAMAGE["truncated JSON"]())
    before = ledger_path.read_bytes()
    code, _, err = run(capsys, "jobs", "show", BAD, *(["--offline"] if offline else []))
    assert code == 2 and "cannot be read" in err and "SELECT * FROM jobs" in err and "DELETE FROM jobs" in err
    assert_clean(err)
    assert ledger_path.read_bytes() == before


def test_a_bad_cost_row_is_left_out_of_jobs_show_and_named(capsys, ledger_path):
    execute(ledger_path, "INSERT INTO costs (recorded_at, provider, job_id, kind, usd, basis) VALUES "
                         "('not a time', 'together', ?, 'billed', 'a lot', 'by hand')", GOOD)
    code, out, err = run(capsys, "jobs", "show", GOOD, "--offline")
    assert code == 0 and "$1.5000" in out and "by hand" not in out
    assert "costs 2" in err and "DELETE FROM costs WHERE id = 2" in err
    assert_clean(err)


def test_a_bad_event_row_is_left_out_of_jobs_events_and_named(capsys, ledger_path):
    execute(ledger_path, "INSERT INTO events (provider, job_id, event_id, time, level, message, step) VALUES "
                         "('together', ?, 'ev-2', 'garbage', 'info', 'broken', 'three')", GOOD)
    code, out, err = run(capsys, "jobs", "events", GOOD, "--offline")
    assert code == 0 and "started" in out and "broken" not in out
    assert f"events {GOOD}/ev-2" in err
    assert_clean(err)


def test_a_listing_returns_what_it_could_read_and_what_it_skipped(ledger_path):
    insert_job(ledger_path, BAD, DAMAGE["unknown status"]())
    ledger = Ledger()
    with pytest.warns(LedgerRowWarning, match=BAD):
        jobs = ledger.jobs()
    assert [job.job_id for job in jobs] == [GOOD]
    assert [(row.table, row.name) for row in jobs.skipped] == [("jobs", BAD)]
    assert "status" in jobs.skipped[0].problem
    with pytest.raises(UnreadableRow, match=BAD):
        ledger.job(BAD)


def test_a_bad_row_of_the_same_request_stops_a_fit_with_a_clear_error_not_a_second_job(ledger_path):
    execute(ledger_path, "INSERT INTO submissions (intent_id, created_at, provider, model, fingerprint, request, "
                         "state) VALUES ('intent-bad', ?, 'together', 'llama', 'fp', '{\"trunc', 'pending')",
            T0.isoformat())
    with pytest.raises(UnreadableRow, match="intent-bad") as caught:
        Ledger().claim_intent("together", "llama", "fp", {})
    assert caught.value.exit_code == 2


# two writers -----------------------------------------------------------------------------------------

WRITERS = ("a", "b")
EVENTS_EACH = 200


def _write_events(path: str, writer: str, count: int, barrier) -> None:
    """Save ``count`` events of one job through the Ledger, one call each, starting with the other writer."""
    ledger = Ledger(path)
    barrier.wait(timeout=30)
    for n in range(count):
        ledger.save_events("local", "ljob-1", [JobEvent(id=f"{writer}-{n:05d}", time=T0, message=f"{writer} {n}")])
    ledger.close()


def test_two_processes_saving_one_jobs_events_at_once_lose_none(tmp_path):
    path = tmp_path / "state.db"
    Ledger(path).close()
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(WRITERS))
    processes = [context.Process(target=_write_events, args=(str(path), writer, EVENTS_EACH, barrier))
                 for writer in WRITERS]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    assert [p.exitcode for p in processes] == [0, 0]  # a "database is locked" would have ended one with 1
    ids = [event.id for event in Ledger(path).events("local", "ljob-1")]
    assert sorted(ids) == sorted(f"{w}-{n:05d}" for w in WRITERS for n in range(EVENTS_EACH))
