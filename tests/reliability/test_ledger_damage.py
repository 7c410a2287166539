"""A ledger that is damaged, someone else's, or newer than this tuneproxy: a clear usage error, and the file
left exactly as it was; a new one is private to its user."""

from __future__ import annotations

import sqlite3
import stat

import pytest

from tests.cli_helpers import run_cli
from tuneproxy.errors import LedgerUnusable
from tuneproxy.ledger import Ledger


def _unchanged_after_jobs_list(capsys, path) -> str:
    before = path.read_bytes()
    code, _, err = run_cli(capsys, "jobs", "list")
    assert code == 2 and "Traceback" not in err and "internal error" not in err
    assert path.read_bytes() == before
    return err


def test_a_damaged_ledger_is_a_usage_error_that_says_what_to_do_and_is_left_as_it_is(capsys, isolated_home):
    path = isolated_home / "state.db"
    path.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 20)
    assert "move it aside" in _unchanged_after_jobs_list(capsys, path)


def test_a_text_file_named_state_db_is_refused(capsys, isolated_home):
    path = isolated_home / "state.db"
    path.write_text("these are my notes, not a database\n")
    assert "Cannot use the ledger" in _unchanged_after_jobs_list(capsys, path)


def test_someone_elses_database_gets_none_of_our_tables(capsys, isolated_home):
    path = isolated_home / "state.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    db.commit()
    db.close()
    assert "did not make" in _unchanged_after_jobs_list(capsys, path)


def test_a_ledger_newer_than_this_tuneproxy_is_refused_with_both_versions(isolated_home):
    Ledger().close()
    db = sqlite3.connect(isolated_home / "state.db")
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    with pytest.raises(LedgerUnusable, match="schema 99, newer than this tuneproxy understands"):
        Ledger()


def test_a_new_home_and_ledger_are_private_to_their_user(tmp_path, monkeypatch):
    home = tmp_path / "fresh-home"
    monkeypatch.setenv("TUNEPROXY_HOME", str(home))
    Ledger().close()
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "state.db").stat().st_mode) == 0o600
