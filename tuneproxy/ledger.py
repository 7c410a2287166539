"""The ledger: an embedded SQLite database of submissions, jobs, events and costs.

It is how a job survives a crash of the client (a submission's intent row is written *before* any paid
call, and gets the job id as soon as the service answers), how a duplicate paid submission is
prevented (an unfinished intent is reconciled with the service, not submitted again), and how spend is
reported. Schema changes are numbered migrations recorded in ``PRAGMA user_version``. Keys are never
stored: rows hold only what the services returned and what the user asked for.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from tuneproxy.contract import CostEstimate, JobEvent, JobRecord
from tuneproxy.errors import JobNotFound, TuneproxyError

MIGRATIONS: list[str] = [
    # 1: the first schema
    """
    CREATE TABLE submissions (
        intent_id   TEXT PRIMARY KEY,
        created_at  TEXT NOT NULL,
        provider    TEXT NOT NULL,
        model       TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        request     TEXT NOT NULL,
        state       TEXT NOT NULL,
        job_id      TEXT,
        error       TEXT
    );
    CREATE INDEX submissions_fingerprint ON submissions (fingerprint, state);
    CREATE TABLE jobs (
        provider         TEXT NOT NULL,
        job_id           TEXT NOT NULL,
        intent_id        TEXT,
        model            TEXT NOT NULL,
        status           TEXT NOT NULL,
        raw_status       TEXT NOT NULL,
        fine_tuned_model TEXT,
        created_at       TEXT,
        finished_at      TEXT,
        updated_at       TEXT NOT NULL,
        error            TEXT,
        trained_tokens   INTEGER,
        billed_usd       REAL,
        record           TEXT NOT NULL,
        PRIMARY KEY (provider, job_id)
    );
    CREATE TABLE events (
        provider   TEXT NOT NULL,
        job_id     TEXT NOT NULL,
        event_id   TEXT NOT NULL,
        time       TEXT NOT NULL,
        level      TEXT NOT NULL,
        message    TEXT NOT NULL,
        step       INTEGER,
        epoch      REAL,
        train_loss REAL,
        valid_loss REAL,
        PRIMARY KEY (provider, job_id, event_id)
    );
    CREATE TABLE costs (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        recorded_at TEXT NOT NULL,
        provider    TEXT NOT NULL,
        intent_id   TEXT,
        job_id      TEXT,
        kind        TEXT NOT NULL CHECK (kind IN ('estimate', 'billed')),
        usd         REAL,
        tokens      INTEGER,
        basis       TEXT NOT NULL
    );
    """,
]


def home() -> Path:
    """``$TUNEPROXY_HOME``, default ``~/.tuneproxy``."""
    return Path(os.environ.get("TUNEPROXY_HOME") or Path.home() / ".tuneproxy")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


class Submission(BaseModel):
    """An intent to create a job, written before any paid call."""

    intent_id: str
    created_at: str
    provider: str
    model: str
    fingerprint: str
    request: dict[str, Any]
    state: str
    job_id: str | None = None
    error: str | None = None


class Ledger:
    """The state database. One per ``$TUNEPROXY_HOME``; safe to open from several processes (WAL)."""

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path else home() / "state.db"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise TuneproxyError(f"Cannot open the ledger at {self.path} ({exc}); set TUNEPROXY_HOME to a "
                                 "writable folder.") from None
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    def close(self) -> None:
        """Close the database connection."""
        self.db.close()

    # -- schema ---------------------------------------------------------------------------------------
    @property
    def version(self) -> int:
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    def _migrate(self) -> None:
        current = self.version
        if current > len(MIGRATIONS):
            raise TuneproxyError(f"The ledger at {self.path} is schema {current}, newer than this tuneproxy "
                                 f"understands ({len(MIGRATIONS)}); upgrade tuneproxy.")
        for number, script in enumerate(MIGRATIONS[current:], start=current + 1):
            with self._transaction():
                for statement in filter(str.strip, script.split(";")):
                    self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version = {number}")

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- submissions ----------------------------------------------------------------------------------
    def record_intent(self, provider: str, model: str, fingerprint: str, request: dict[str, Any]) -> Submission:
        """Write the intent row for a submission about to be made.

        Its id is derived from the request's fingerprint and how many times that same request was made
        before: the same request gets the same id (it tags the job at the service, like an idempotency
        key), and a deliberate re-run of a finished request gets a new one.
        """
        attempt = self.db.execute("SELECT count(*) FROM submissions WHERE fingerprint = ?",
                                  (fingerprint,)).fetchone()[0]
        intent_id = hashlib.sha256(f"{fingerprint}:{attempt}".encode()).hexdigest()[:32]
        sub = Submission(intent_id=intent_id, created_at=_now(), provider=provider, model=model,
                         fingerprint=fingerprint, request=request, state="pending")
        self.db.execute(
            "INSERT INTO submissions VALUES (?, ?, ?, ?, ?, ?, ?, NULL, NULL)",
            (sub.intent_id, sub.created_at, provider, model, fingerprint, json.dumps(request), sub.state),
        )
        return sub

    def unfinished_intent(self, provider: str, fingerprint: str) -> Submission | None:
        """A pending submission of the same request whose outcome is unknown (the client died or the
        create's answer was lost): it must be reconciled with the service before submitting again."""
        row = self.db.execute(
            "SELECT * FROM submissions WHERE provider = ? AND fingerprint = ? AND state IN ('pending', "
            "'uncertain') ORDER BY created_at DESC LIMIT 1", (provider, fingerprint),
        ).fetchone()
        return self._submission(row) if row else None

    def mark_submission(self, intent_id: str, state: str, job_id: str | None = None,
                        error: str | None = None) -> None:
        """Record what became of a submission: submitted (with its job id), uncertain, failed or refused."""
        self.db.execute("UPDATE submissions SET state = ?, job_id = COALESCE(?, job_id), error = ? "
                        "WHERE intent_id = ?", (state, job_id, error, intent_id))

    def submission(self, intent_id: str) -> Submission | None:
        """The submission with this intent id, if any."""
        row = self.db.execute("SELECT * FROM submissions WHERE intent_id = ?", (intent_id,)).fetchone()
        return self._submission(row) if row else None

    @staticmethod
    def _submission(row: sqlite3.Row) -> Submission:
        data = dict(row)
        data["request"] = json.loads(data["request"])
        return Submission(**data)

    # -- jobs -----------------------------------------------------------------------------------------
    def save_job(self, record: JobRecord) -> None:
        """Insert or update a job's latest state."""
        self.db.execute(
            """INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (provider, job_id) DO UPDATE SET
                 intent_id = COALESCE(excluded.intent_id, jobs.intent_id), status = excluded.status,
                 raw_status = excluded.raw_status, fine_tuned_model = excluded.fine_tuned_model,
                 finished_at = excluded.finished_at, updated_at = excluded.updated_at, error = excluded.error,
                 trained_tokens = excluded.trained_tokens, billed_usd = excluded.billed_usd,
                 record = excluded.record""",
            (record.provider, record.job_id, record.intent_id, record.model, record.status.value,
             record.raw_status, record.fine_tuned_model, _iso(record.created_at), _iso(record.finished_at),
             _now(), record.error, record.trained_tokens, record.billed_usd, record.model_dump_json()),
        )

    def job(self, job_id: str, provider: str | None = None) -> JobRecord:
        """The last saved state of a job, by its id or a prefix of it that names exactly one job."""
        if not job_id.strip():
            raise JobNotFound("Give a job id (or the start of one); `tuneproxy jobs list` shows them.")
        query = "SELECT job_id, record FROM jobs WHERE substr(job_id, 1, ?) = ?"
        args: list[Any] = [len(job_id), job_id]
        if provider:
            query += " AND provider = ?"
            args.append(provider)
        rows = self.db.execute(query, args).fetchall()
        exact = [r for r in rows if r["job_id"] == job_id]
        if exact:
            rows = exact
        if not rows:
            raise JobNotFound(f"No job {job_id!r} in the ledger at {self.path}; `tuneproxy jobs list` shows "
                              "the jobs it knows.")
        if len(rows) > 1:
            names = ", ".join(sorted(r["job_id"] for r in rows)[:5])
            raise JobNotFound(f"{job_id!r} is the start of {len(rows)} jobs ({names}); give more of the id.")
        return JobRecord.model_validate_json(rows[0]["record"])

    def jobs(self, provider: str | None = None, limit: int = 50) -> list[JobRecord]:
        """Recent jobs, newest first."""
        query, args = "SELECT record FROM jobs", []
        if provider:
            query, args = query + " WHERE provider = ?", [provider]
        rows = self.db.execute(query + " ORDER BY created_at DESC, updated_at DESC LIMIT ?",
                               [*args, limit]).fetchall()
        return [JobRecord.model_validate_json(r["record"]) for r in rows]

    # -- events ---------------------------------------------------------------------------------------
    def save_events(self, provider: str, job_id: str, events: list[JobEvent]) -> int:
        """Store events not seen before; returns how many were new."""
        before = self.db.total_changes
        self.db.executemany(
            "INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(provider, job_id, e.id, e.time.isoformat(), e.level, e.message, e.step, e.epoch, e.train_loss,
              e.valid_loss) for e in events],
        )
        return self.db.total_changes - before

    def events(self, provider: str, job_id: str) -> list[JobEvent]:
        """Every stored event of a job, in the order they were seen."""
        rows = self.db.execute("SELECT * FROM events WHERE provider = ? AND job_id = ? ORDER BY rowid",
                               (provider, job_id)).fetchall()
        return [JobEvent(id=r["event_id"], time=dt.datetime.fromisoformat(r["time"]), level=r["level"],
                         message=r["message"], step=r["step"], epoch=r["epoch"], train_loss=r["train_loss"],
                         valid_loss=r["valid_loss"]) for r in rows]

    def last_event_id(self, provider: str, job_id: str) -> str | None:
        """The id of the newest stored event: the cursor for asking the backend for newer ones."""
        row = self.db.execute("SELECT event_id FROM events WHERE provider = ? AND job_id = ? "
                              "ORDER BY rowid DESC LIMIT 1", (provider, job_id)).fetchone()
        return row["event_id"] if row else None

    # -- costs ----------------------------------------------------------------------------------------
    def record_estimate(self, estimate: CostEstimate, intent_id: str | None = None) -> None:
        """Store a cost estimate made before (or while) submitting."""
        self.db.execute(
            "INSERT INTO costs (recorded_at, provider, intent_id, job_id, kind, usd, tokens, basis) "
            "VALUES (?, ?, ?, NULL, 'estimate', ?, ?, ?)",
            (_now(), estimate.provider, intent_id, estimate.usd, estimate.billable_tokens, estimate.basis),
        )

    def record_billed(self, record: JobRecord, basis: str) -> None:
        """The service's final figure for a finished job (once per job)."""
        exists = self.db.execute("SELECT 1 FROM costs WHERE provider = ? AND job_id = ? AND kind = 'billed'",
                                 (record.provider, record.job_id)).fetchone()
        if exists:
            return
        self.db.execute(
            "INSERT INTO costs (recorded_at, provider, intent_id, job_id, kind, usd, tokens, basis) "
            "VALUES (?, ?, ?, ?, 'billed', ?, ?, ?)",
            (_now(), record.provider, record.intent_id, record.job_id, record.billed_usd, record.trained_tokens,
             basis),
        )

    def costs(self, job_id: str | None = None, intent_id: str | None = None) -> list[dict[str, Any]]:
        """Cost rows, optionally of one job or one submission, oldest first."""
        rows = self.db.execute("SELECT * FROM costs WHERE (? IS NULL OR job_id = ?) AND (? IS NULL OR "
                               "intent_id = ?) ORDER BY id", (job_id, job_id, intent_id, intent_id)).fetchall()
        return [dict(r) for r in rows]

    def job_costs(self, record: JobRecord) -> list[dict[str, Any]]:
        """Every cost row of a job: the estimates made for its submission, then what was billed."""
        rows = self.db.execute("SELECT * FROM costs WHERE (provider = ? AND job_id = ?) OR (? IS NOT NULL AND "
                               "intent_id = ?) ORDER BY id", (record.provider, record.job_id, record.intent_id,
                                                             record.intent_id)).fetchall()
        return [dict(r) for r in rows]

    def spend(self) -> dict[str, float]:
        """Billed dollars per provider, all time."""
        rows = self.db.execute("SELECT provider, SUM(usd) AS usd FROM costs WHERE kind = 'billed' "
                               "GROUP BY provider").fetchall()
        return {r["provider"]: r["usd"] or 0.0 for r in rows}


__all__ = ["Ledger", "Submission", "home"]
