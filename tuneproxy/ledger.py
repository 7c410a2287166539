"""The ledger: an embedded SQLite database of submissions, jobs, events, deployments, costs and the
evaluation's answer cache.

It is how a job survives a crash of the client (a submission's intent row is written *before* any paid
call, and gets the job id as soon as the service answers), how a duplicate paid submission is
prevented (:meth:`Ledger.claim_intent` looks for an unfinished intent and writes a new one in one
``BEGIN IMMEDIATE`` transaction, so two processes submitting the same request cannot both get a fresh
intent; the unfinished one is reconciled with the service, not submitted again), and how spend is
reported. Schema changes are numbered migrations recorded in ``PRAGMA user_version``; a released
migration is never edited, only followed by a new one. Keys are never stored: rows hold only what the
services returned and what the user asked for (a provider's options, never its key). Every timestamp
the ledger writes comes from its clock, so tests can fix time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import secrets
import shlex
import socket
import sqlite3
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from tuneproxy.contract import (
    Clock,
    Completion,
    CostEstimate,
    Deployment,
    GenerationParams,
    JobEvent,
    JobRecord,
    QuantityKind,
    utc_now,
)
from tuneproxy.errors import JobNotFound, LedgerUnusable, TuneproxyError, redact
from tuneproxy.paths import home, private_folder

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
    # 2: provider options kept with each submission (to reattach a job with the same provider); costs
    # rebuilt (SQLite cannot alter a CHECK) for inference and deployment rows, with the model, a low/high
    # range and a typed quantity instead of a token count; paid deployments. Every old cost row is copied
    # with its id; its model is taken from its job or submission where the ledger knows it.
    # The process submitting a pending intent (owner, claimed_at), so a concurrent fit of the same request
    # waits instead of submitting it too.
    # No statement may contain a literal semicolon outside a string (see Ledger._statements).
    """
    ALTER TABLE submissions ADD COLUMN options TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE submissions ADD COLUMN owner TEXT;
    ALTER TABLE submissions ADD COLUMN claimed_at TEXT;
    CREATE TABLE costs_v2 (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        recorded_at   TEXT NOT NULL,
        provider      TEXT NOT NULL,
        intent_id     TEXT,
        job_id        TEXT,
        deployment_id TEXT,
        kind          TEXT NOT NULL CHECK (kind IN ('estimate', 'billed', 'inference', 'deployment')),
        model         TEXT,
        usd           REAL,
        usd_low       REAL,
        usd_high      REAL,
        quantity      REAL,
        unit          TEXT,
        price_source  TEXT,
        authoritative INTEGER NOT NULL DEFAULT 0,
        basis         TEXT NOT NULL
    );
    INSERT INTO costs_v2 (id, recorded_at, provider, intent_id, job_id, kind, model, usd, quantity, unit, basis)
        SELECT c.id, c.recorded_at, c.provider, c.intent_id, c.job_id, c.kind,
               COALESCE((SELECT j.model FROM jobs j WHERE j.provider = c.provider AND j.job_id = c.job_id),
                        (SELECT s.model FROM submissions s WHERE s.intent_id = c.intent_id)),
               c.usd, c.tokens, CASE WHEN c.tokens IS NULL THEN NULL ELSE 'training_tokens' END, c.basis
        FROM costs c ORDER BY c.id;
    DROP TABLE costs;
    ALTER TABLE costs_v2 RENAME TO costs;
    CREATE INDEX costs_job ON costs (provider, job_id, kind);
    CREATE INDEX costs_intent ON costs (intent_id);
    CREATE TABLE deployments (
        provider      TEXT NOT NULL,
        deployment_id TEXT NOT NULL,
        model         TEXT NOT NULL,
        serving_model TEXT,
        state         TEXT NOT NULL,
        raw_state     TEXT NOT NULL,
        hardware      TEXT,
        usd_per_hour  REAL,
        created_at    TEXT NOT NULL,
        updated_at    TEXT NOT NULL,
        deleted_at    TEXT,
        record        TEXT NOT NULL,
        PRIMARY KEY (provider, deployment_id)
    );
    """,
    # 3: the evaluation's answer cache: one successful answer per endpoint, generation settings and item,
    # so a rerun after Ctrl-C or a crash asks only for what is missing. ``prompt_sha256`` is the prompt
    # the answer was given to (an item whose prompt changed is asked again).
    """
    CREATE TABLE answers (
        endpoint_key      TEXT NOT NULL,
        params_hash       TEXT NOT NULL,
        item_id           TEXT NOT NULL,
        prompt_sha256     TEXT NOT NULL,
        provider          TEXT NOT NULL,
        model             TEXT NOT NULL,
        params            TEXT NOT NULL,
        text              TEXT NOT NULL,
        finish_reason     TEXT NOT NULL,
        prompt_tokens     INTEGER NOT NULL DEFAULT 0,
        completion_tokens INTEGER NOT NULL DEFAULT 0,
        cost_usd          REAL,
        latency_s         REAL NOT NULL DEFAULT 0,
        created_at        TEXT NOT NULL,
        PRIMARY KEY (endpoint_key, params_hash, item_id)
    );
    """,
]

SubmissionState = Literal["pending", "uncertain", "submitted", "failed", "refused"]
CostKind = Literal["estimate", "billed", "inference", "deployment"]


class DeploymentNotFound(TuneproxyError):
    """No deployment with that id in the ledger."""

    exit_code = 2


class UnreadableRow(TuneproxyError):
    """A row asked for by its id cannot be read (edited by hand, or written by a broken build); the
    message says how to look at it and how to delete it."""

    exit_code = 2


class LedgerRowWarning(UserWarning):
    """A listing left out rows of the ledger that cannot be read (it names them, and how to delete them)."""


class SkippedRow(BaseModel):
    """A row a listing left out because it cannot be read: which one, and why."""

    table: str
    name: str  # how a person names it: a job id, a cost row's number
    where: str  # an SQL condition that selects it, to look at it or delete it
    problem: str


T = TypeVar("T")


class Rows(list[T], Generic[T]):
    """What a ledger listing could read, as a list; ``skipped`` holds the rows it could not (a bad row
    is left out and reported, never allowed to hide every good one)."""

    def __init__(self, items: Iterable[T] = (), skipped: Iterable[SkippedRow] = ()) -> None:
        super().__init__(items)
        self.skipped = list(skipped)


def _problem(exc: Exception) -> str:
    """What is wrong with a row, in one short phrase (never the row's content: it may be anything)."""
    if isinstance(exc, ValidationError):
        first = exc.errors(include_url=False, include_input=False)[0]
        field = ".".join(str(part) for part in first["loc"])
        text = f"{field}: {first['msg']}" if field else first["msg"]
    else:
        text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 120 else text[:117] + "..."


def _quoted(value: Any) -> str:
    return str(value) if isinstance(value, int) else "'" + str(value).replace("'", "''") + "'"


def _text(data: bytes) -> str:
    # a row with bytes that are not UTF-8 is read (and then reported), instead of failing the whole query
    return data.decode("utf-8", errors="replace")


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
    options: dict[str, Any] = {}
    state: SubmissionState
    job_id: str | None = None
    error: str | None = None
    owner: str | None = None
    claimed_at: str | None = None


# A claim from another machine is taken as abandoned after this long (its process cannot be asked).
CLAIM_LEASE = dt.timedelta(minutes=30)


class SubmissionInProgress(TuneproxyError):
    """Another process is submitting the same request right now (``intent_id``: its submission)."""

    exit_code = 3

    def __init__(self, message: str, intent_id: str) -> None:
        super().__init__(message)
        self.intent_id = intent_id


def _owner_alive(owner: str, claimed_at: str | None, now: dt.datetime) -> bool:
    """Whether the process that claimed an intent may still be submitting it: on this machine, whether its
    pid runs; on another, whether its claim is younger than :data:`CLAIM_LEASE`."""
    host, _, rest = owner.rpartition("@")
    if host == socket.gethostname():
        try:
            os.kill(int(rest.split(":")[0]), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, ValueError):
            return True
        return True
    return claimed_at is not None and now - dt.datetime.fromisoformat(claimed_at) < CLAIM_LEASE


class CostRow(BaseModel):
    """One row of the costs table: an estimate, a billed figure, or an inference or deployment charge."""

    id: int
    recorded_at: dt.datetime
    provider: str
    intent_id: str | None = None
    job_id: str | None = None
    deployment_id: str | None = None
    kind: CostKind
    model: str | None = None
    usd: float | None = None
    usd_low: float | None = None
    usd_high: float | None = None
    quantity: float | None = None
    unit: QuantityKind | None = None
    price_source: str | None = None
    authoritative: bool = False
    basis: str


class CachedAnswer(BaseModel):
    """One answer in the evaluation's answer cache: what an endpoint said to one item, and what it cost."""

    item_id: str
    prompt_sha256: str
    model: str
    text: str
    finish_reason: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    latency_s: float = 0.0
    created_at: dt.datetime


class DeploymentSpan(BaseModel):
    """A deployment as the ledger keeps it, for what it cost: its hourly price and the times it billed
    between. ``created_at`` is the service's own time when it gave one, else when the ledger first saw it;
    ``deleted_at`` is when the ledger first saw it stopped (None while it has not: still billing, as far as
    the ledger knows). The ledger keeps only the latest hourly price."""

    provider: str
    deployment_id: str
    model: str
    serving_model: str | None = None
    state: str
    usd_per_hour: float | None = None
    created_at: dt.datetime
    updated_at: dt.datetime
    deleted_at: dt.datetime | None = None


class JobLink(BaseModel):
    """What ties a job to its costs: its submission (whose estimates it has), and the tuned model its
    deployments serve and its evaluation asks."""

    provider: str
    job_id: str
    intent_id: str | None = None
    base_model: str
    tuned_model: str | None = None


def _deployment_span(row: sqlite3.Row) -> DeploymentSpan:
    return DeploymentSpan(**{key: row[key] for key in DeploymentSpan.model_fields})


def _job_link(row: sqlite3.Row) -> JobLink:
    return JobLink(provider=row["provider"], job_id=row["job_id"], intent_id=row["intent_id"],
                   base_model=row["model"], tuned_model=row["fine_tuned_model"])


def _cached_answer(row: sqlite3.Row) -> CachedAnswer:
    return CachedAnswer(**{key: row[key] for key in CachedAnswer.model_fields})


def _job_record(row: sqlite3.Row) -> JobRecord:
    return JobRecord.model_validate_json(row["record"])


def _deployment(row: sqlite3.Row) -> Deployment:
    return Deployment.model_validate_json(row["record"])


def _cost_row(row: sqlite3.Row) -> CostRow:
    return CostRow(**dict(row))


def _event(row: sqlite3.Row) -> JobEvent:
    return JobEvent(id=row["event_id"], time=dt.datetime.fromisoformat(row["time"]), level=row["level"],
                    message=row["message"], step=row["step"], epoch=row["epoch"], train_loss=row["train_loss"],
                    valid_loss=row["valid_loss"])


class Ledger:
    """The state database. One per ``$TUNEPROXY_HOME``; safe to open and write from several processes
    at once (WAL, a 30 s busy timeout, and ``BEGIN IMMEDIATE`` around every read-then-write)."""

    def __init__(self, path: Path | str | None = None, clock: Clock = utc_now) -> None:
        self.path = Path(path) if path else home() / "state.db"
        self.clock = clock
        # who claims intents through this ledger: this machine, this process, this ledger
        self.owner = f"{socket.gethostname()}@{os.getpid()}:{secrets.token_hex(4)}"
        try:
            private_folder(self.path.parent)
            new = not self.path.exists()
            self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            if new:
                os.chmod(self.path, 0o600)  # submissions and costs are the team's business only
            self.db.row_factory = sqlite3.Row
            self.db.text_factory = _text
            self._check_ours()
            self._use_wal()
        except (OSError, sqlite3.Error) as exc:
            raise LedgerUnusable(f"Cannot use the ledger at {self.path} ({exc}). If the file is damaged, move it "
                                 "aside (tuneproxy then starts a new one); otherwise set TUNEPROXY_HOME to a "
                                 "writable folder.") from None
        try:
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise LedgerUnusable(f"The ledger at {self.path} is damaged ({exc}); it was left as it is. Move it "
                                 "aside to start a new one (its jobs stay at their services).") from None

    def _check_ours(self) -> None:
        """Refuse a SQLite file that holds someone else's tables (never add ours to it)."""
        tables = {row[0] for row in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if self.version == 0 and tables - {"sqlite_sequence"}:
            raise LedgerUnusable(f"{self.path} is a database tuneproxy did not make (it holds "
                                 f"{', '.join(sorted(tables)[:5])}); it was left as it is. Set TUNEPROXY_HOME to "
                                 "another folder.")

    def _use_wal(self, patience_s: float = 30.0) -> None:
        # Switching a new file to WAL needs it to itself, and SQLite answers "locked" at once instead of
        # waiting, when another process is opening the same new file: wait here. WAL is then permanent.
        deadline = time.monotonic() + patience_s
        while True:
            try:
                self.db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def close(self) -> None:
        """Close the database connection."""
        self.db.close()

    def _now(self) -> str:
        return self.clock().isoformat()

    # -- schema ---------------------------------------------------------------------------------------
    @property
    def version(self) -> int:
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    def _migrate(self) -> None:
        # Each migration runs in its own transaction, and the version is read again inside it: another
        # process opening the same new file at the same moment may have applied it already.
        if self.version == len(MIGRATIONS):  # the usual case: no write lock needed to learn it
            return
        while True:
            with self._transaction():
                current = self.version
                if current > len(MIGRATIONS):
                    raise LedgerUnusable(f"The ledger at {self.path} is schema {current}, newer than this "
                                         f"tuneproxy understands ({len(MIGRATIONS)}); upgrade tuneproxy.")
                if current == len(MIGRATIONS):
                    return
                try:
                    for statement in self._statements(MIGRATIONS[current]):
                        self.db.execute(statement)
                    self.db.execute(f"PRAGMA user_version = {current + 1}")
                except sqlite3.Error as exc:
                    step = f"from schema {current} to {current + 1}"
                    raise TuneproxyError(f"Could not upgrade the ledger at {self.path} {step} ({exc}); it was "
                                         "left unchanged. Please report this.") from exc

    @staticmethod
    def _statements(script: str) -> list[str]:
        """The statements of a migration script, split on the semicolons that end them (a semicolon
        inside a quoted string does not end a statement)."""
        statements: list[str] = []
        pending = ""
        for piece in script.split(";"):
            pending += piece + ";"
            if sqlite3.complete_statement(pending):
                if pending.strip(" \n;"):
                    statements.append(pending)
                pending = ""
        if pending.strip(" \n;"):
            raise ValueError(f"Unterminated statement in a migration: {pending.strip()[:80]!r}")
        return statements

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        if self.db.in_transaction:  # already inside one: its BEGIN IMMEDIATE covers this too
            yield
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _find(self, table: str, key: str, ident: str, provider: str | None) -> list[sqlite3.Row]:
        """Rows whose ``key`` is ``ident`` or starts with it (an exact match wins); wildcards are literal."""
        query = f"SELECT provider, {key}, record FROM {table} WHERE substr({key}, 1, ?) = ?"
        args: list[Any] = [len(ident), ident]
        if provider:
            query += " AND provider = ?"
            args.append(provider)
        rows = self.db.execute(query, args).fetchall()
        exact = [r for r in rows if r[key] == ident]
        return exact or rows

    # -- rows that may be damaged -------------------------------------------------------------------------
    # A row edited by hand, or written by a broken build, must not hide every good row: a listing leaves it
    # out and names it (a LedgerRowWarning, and the result's ``skipped``); asked for by its id, it is a
    # clear error that says how to look at it and delete it. Nothing is ever changed while reading.
    def _read_all(self, table: str, rows: Iterable[sqlite3.Row], keys: tuple[str, ...],
                  parse: Callable[[sqlite3.Row], T]) -> Rows[T]:
        good: list[T] = []
        skipped: list[SkippedRow] = []
        for row in rows:
            try:
                good.append(parse(row))
            except (ValueError, TypeError) as exc:  # pydantic's ValidationError and JSON's errors included
                skipped.append(self._skipped(table, row, keys, exc))
        if skipped:
            warnings.warn(self._skipped_note(skipped), LedgerRowWarning, stacklevel=3)
        return Rows(good, skipped)

    def _read_one(self, table: str, row: sqlite3.Row, keys: tuple[str, ...], parse: Callable[[sqlite3.Row], T]) -> T:
        try:
            return parse(row)
        except (ValueError, TypeError) as exc:
            bad = self._skipped(table, row, keys, exc)
        raise UnreadableRow(f"The {table} row {bad.name} in the ledger at {self.path} cannot be read ({bad.problem}); "
                            f"it was left as it is. {self._how_to_look(bad)}")

    @staticmethod
    def _skipped(table: str, row: sqlite3.Row, keys: tuple[str, ...], exc: Exception) -> SkippedRow:
        values = [row[key] for key in keys]
        return SkippedRow(table=table, name="/".join(str(v) for k, v in zip(keys, values) if k != "provider"),
                          where=" AND ".join(f"{k} = {_quoted(v)}" for k, v in zip(keys, values)),
                          problem=_problem(exc))

    def _how_to_look(self, row: SkippedRow) -> str:
        db = shlex.quote(str(self.path))
        return (f'Look at it with `sqlite3 {db} "SELECT * FROM {row.table} WHERE {row.where}"`; deleting it '
                f'(`sqlite3 {db} "DELETE FROM {row.table} WHERE {row.where}"`) forgets it in this ledger only.')

    def _skipped_note(self, skipped: list[SkippedRow]) -> str:
        shown = "; ".join(f"{row.table} {row.name} ({row.problem})" for row in skipped[:10])
        more = f"; and {len(skipped) - 10} more" if len(skipped) > 10 else ""
        what = "1 row" if len(skipped) == 1 else f"{len(skipped)} rows"
        return (f"{what} of the ledger at {self.path} cannot be read and {'was' if len(skipped) == 1 else 'were'} "
                f"left out: {shown}{more}. {self._how_to_look(skipped[0])}")

    # -- submissions ----------------------------------------------------------------------------------
    def claim_intent(self, provider: str, model: str, fingerprint: str, request: dict[str, Any],
                     options: dict[str, Any] | None = None, *, unless_running: bool = False
                     ) -> tuple[Submission, bool]:
        """The intent to submit this request: ``(submission, fresh)``.

        In one ``BEGIN IMMEDIATE`` transaction (so concurrent callers, in any process, are serialised):
        if a submission of the same request to the same provider is still pending or uncertain (a client
        died, or a create's answer was lost), that newest one is returned with ``fresh=False`` and must be
        reconciled with the service before anything is submitted; otherwise a new pending intent is
        written and returned with ``fresh=True``. Of several concurrent callers exactly one gets
        ``fresh=True``.

        The intent id is derived from the request's fingerprint and how many times that request was made
        before, so it is deterministic across machines, like an idempotency key: the same request gets
        the same id (it tags the job at the service), and a deliberate rerun of a finished request gets a
        new one. A teammate who reruns the same data on a shared account after a crash can therefore
        adopt the job the first run created instead of paying for a second one; that is intended.

        ``options`` are the provider's non-secret settings (``ProviderOptions.stored()``), kept so the
        job can be followed later by a provider built the same way.

        The claim is this ledger's until :meth:`release_claim`: a pending intent whose claimer still runs
        (another process or thread on this machine, or a claim from another machine younger than
        :data:`CLAIM_LEASE`) raises :class:`SubmissionInProgress` — it may be uploading right now, and
        looking for its job would find nothing and submit it twice. An intent whose claimer died, or that
        is ``uncertain``, is taken over and returned for reconciling.

        ``unless_running=True``: a job of this same request that was submitted and has not ended (by its
        last saved state) raises :class:`SubmissionInProgress` naming it, instead of a fresh intent. A
        caller that looked for such a job before claiming (``fit`` does) passes it, so that a process that
        submitted the same request in between is seen here, inside the transaction, and not paid twice.
        """
        options = dict(options or {})
        try:
            with self._transaction():
                row = self.db.execute(
                    "SELECT * FROM submissions WHERE provider = ? AND fingerprint = ? AND state IN "
                    "('pending', 'uncertain') ORDER BY created_at DESC, rowid DESC LIMIT 1",
                    (provider, fingerprint),
                ).fetchone()
                if row:
                    found = self._read_one("submissions", row, ("intent_id",), self._submission)
                    if (found.state == "pending" and found.owner and found.owner != self.owner
                            and _owner_alive(found.owner, found.claimed_at, self.clock())):
                        raise SubmissionInProgress(
                            f"Another tuneproxy process ({found.owner.split(':')[0]}) is submitting this same "
                            f"request to {provider} right now (intent {found.intent_id}); nothing was sent. Wait "
                            "for it to finish (`tuneproxy jobs list` then shows the job), or run this again once "
                            "it has stopped.", intent_id=found.intent_id)
                    self.db.execute("UPDATE submissions SET owner = ?, claimed_at = ? WHERE intent_id = ?",
                                    (self.owner, self._now(), found.intent_id))
                    return found.model_copy(update={"owner": self.owner}), False
                if unless_running:
                    self._refuse_running(provider, fingerprint)
                attempt = self.db.execute("SELECT count(*) FROM submissions WHERE fingerprint = ?",
                                          (fingerprint,)).fetchone()[0]
                while True:
                    intent_id = hashlib.sha256(f"{fingerprint}:{attempt}".encode()).hexdigest()[:32]
                    taken = self.db.execute("SELECT 1 FROM submissions WHERE intent_id = ?",
                                            (intent_id,)).fetchone()
                    if not taken:
                        break
                    attempt += 1
                now = self._now()
                sub = Submission(intent_id=intent_id, created_at=now, provider=provider, model=model,
                                 fingerprint=fingerprint, request=request, options=options, state="pending",
                                 owner=self.owner, claimed_at=now)
                self.db.execute(
                    "INSERT INTO submissions (intent_id, created_at, provider, model, fingerprint, request, "
                    "options, state, owner, claimed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (sub.intent_id, sub.created_at, provider, model, fingerprint, json.dumps(request),
                     json.dumps(options), sub.state, self.owner, now),
                )
                return sub, True
        except sqlite3.IntegrityError as exc:  # not expected: the transaction excludes every other writer
            raise TuneproxyError(f"Could not record the submission in the ledger at {self.path} ({exc}); "
                                 "run the command again.") from None

    def _refuse_running(self, provider: str, fingerprint: str) -> None:
        running = self.db.execute(
            "SELECT submissions.intent_id, jobs.job_id FROM submissions JOIN jobs ON "
            "jobs.provider = submissions.provider AND jobs.job_id = submissions.job_id WHERE "
            "submissions.provider = ? AND submissions.fingerprint = ? AND submissions.state = 'submitted' AND "
            "jobs.status NOT IN ('succeeded', 'failed', 'cancelled') "
            "ORDER BY submissions.created_at DESC, submissions.rowid DESC LIMIT 1", (provider, fingerprint)).fetchone()
        if running:
            raise SubmissionInProgress(
                f"Job {running['job_id']} on {provider} was submitted for this same request by another tuneproxy "
                "process while this one got ready, and has not ended; nothing was sent. Follow it with `tuneproxy "
                f"jobs wait {running['job_id']}`, or submit a new job anyway with --new (resubmit=True).",
                intent_id=running["intent_id"])

    def release_claim(self, intent_id: str) -> None:
        """This ledger is done submitting ``intent_id`` (whatever became of it): another process may
        reconcile it now."""
        self.db.execute("UPDATE submissions SET owner = NULL WHERE intent_id = ? AND owner = ?",
                        (intent_id, self.owner))

    def mark_submission(self, intent_id: str, state: SubmissionState, job_id: str | None = None,
                        error: str | None = None) -> None:
        """Record what became of a submission: submitted (with its job id), uncertain, failed or refused."""
        self.db.execute("UPDATE submissions SET state = ?, job_id = COALESCE(?, job_id), error = ? "
                        "WHERE intent_id = ?", (state, job_id, redact(error) if error else None, intent_id))

    def submitted_job(self, provider: str, fingerprint: str) -> JobRecord | None:
        """The job of the newest submission of this request that reached the service (its last saved
        state), if any: what a rerun of the same ``fit`` follows instead of paying again."""
        row = self.db.execute(
            "SELECT jobs.provider, jobs.job_id, jobs.record FROM submissions JOIN jobs ON "
            "jobs.provider = submissions.provider AND jobs.job_id = submissions.job_id WHERE "
            "submissions.provider = ? AND submissions.fingerprint = ? AND submissions.state = 'submitted' "
            "ORDER BY submissions.created_at DESC, submissions.rowid DESC LIMIT 1",
            (provider, fingerprint)).fetchone()
        return self._read_one("jobs", row, ("provider", "job_id"), _job_record) if row else None

    def submission(self, intent_id: str) -> Submission | None:
        """The submission with this intent id, if any."""
        row = self.db.execute("SELECT * FROM submissions WHERE intent_id = ?", (intent_id,)).fetchone()
        return self._read_one("submissions", row, ("intent_id",), self._submission) if row else None

    @staticmethod
    def _submission(row: sqlite3.Row) -> Submission:
        data = dict(row)
        data["request"] = json.loads(data["request"])
        data["options"] = json.loads(data["options"])
        return Submission(**data)

    # -- jobs -----------------------------------------------------------------------------------------
    def save_job(self, record: JobRecord) -> None:
        """Insert or update a job's latest state (a service's failure message is stored with any key it
        echoed removed)."""
        if record.error:
            record = record.model_copy(update={"error": redact(record.error)})
        self.db.execute(
            """INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (provider, job_id) DO UPDATE SET
                 intent_id = COALESCE(excluded.intent_id, jobs.intent_id), status = excluded.status,
                 raw_status = excluded.raw_status, fine_tuned_model = excluded.fine_tuned_model,
                 finished_at = excluded.finished_at, updated_at = excluded.updated_at, error = excluded.error,
                 trained_tokens = excluded.trained_tokens, billed_usd = excluded.billed_usd,
                 record = excluded.record""",
            (record.provider, record.job_id, record.intent_id, record.base_model, record.status.value,
             record.raw_status, record.tuned_model, _iso(record.created_at), _iso(record.finished_at),
             self._now(), record.error, record.trained_tokens, record.billed_usd, record.model_dump_json()),
        )

    def job(self, job_id: str, provider: str | None = None) -> JobRecord:
        """The last saved state of a job, by its id or a prefix of it that names exactly one job."""
        if not job_id.strip():
            raise JobNotFound("Give a job id (or the start of one); `tuneproxy jobs list` shows them.")
        rows = self._find("jobs", "job_id", job_id, provider)
        if not rows:
            raise JobNotFound(f"No job {job_id!r} in the ledger at {self.path}; `tuneproxy jobs list` shows "
                              "the jobs it knows.")
        if len(rows) > 1:
            names = ", ".join(sorted(r["job_id"] for r in rows)[:5])
            raise JobNotFound(f"{job_id!r} is the start of {len(rows)} jobs ({names}); give more of the id.")
        return self._read_one("jobs", rows[0], ("provider", "job_id"), _job_record)

    def jobs(self, provider: str | None = None, limit: int = 50) -> Rows[JobRecord]:
        """Recent jobs, newest first (a row that cannot be read is left out: see :class:`Rows`)."""
        query, args = "SELECT provider, job_id, record FROM jobs", []
        if provider:
            query, args = query + " WHERE provider = ?", [provider]
        rows = self.db.execute(query + " ORDER BY created_at DESC, updated_at DESC LIMIT ?",
                               [*args, limit]).fetchall()
        return self._read_all("jobs", rows, ("provider", "job_id"), _job_record)

    def job_links(self) -> Rows[JobLink]:
        """Every job the ledger knows, oldest first, as what ties it to its costs (read from the jobs
        table's own columns; a row that cannot be read is left out)."""
        rows = self.db.execute("SELECT provider, job_id, intent_id, model, fine_tuned_model FROM jobs "
                               "ORDER BY created_at, provider, job_id").fetchall()
        return self._read_all("jobs", rows, ("provider", "job_id"), _job_link)

    # -- events ---------------------------------------------------------------------------------------
    def save_events(self, provider: str, job_id: str, events: list[JobEvent]) -> int:
        """Store events not seen before, all or none (one transaction: another process writing the same
        job's events waits its turn); returns how many were new."""
        if not events:
            return 0
        with self._transaction():
            before = self.db.total_changes
            self.db.executemany(
                "INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(provider, job_id, e.id, e.time.isoformat(), e.level, redact(e.message), e.step, e.epoch,
                  e.train_loss, e.valid_loss) for e in events],
            )
            return self.db.total_changes - before

    def events(self, provider: str, job_id: str) -> Rows[JobEvent]:
        """Every stored event of a job, in the order they were seen (a row that cannot be read is left out)."""
        rows = self.db.execute("SELECT * FROM events WHERE provider = ? AND job_id = ? ORDER BY rowid",
                               (provider, job_id)).fetchall()
        return self._read_all("events", rows, ("provider", "job_id", "event_id"), _event)

    def last_event_id(self, provider: str, job_id: str) -> str | None:
        """The id of the newest stored event: the cursor for asking the backend for newer ones."""
        row = self.db.execute("SELECT event_id FROM events WHERE provider = ? AND job_id = ? "
                              "ORDER BY rowid DESC LIMIT 1", (provider, job_id)).fetchone()
        return row["event_id"] if row else None

    # -- deployments ----------------------------------------------------------------------------------
    def save_deployment(self, deployment: Deployment) -> None:
        """Insert or update a deployment's latest state; a stopped one is marked deleted (no longer billed).

        ``created_at`` is the service's own time when it gave one, else when the ledger first saw it.
        """
        now = self._now()
        self.db.execute(
            """INSERT INTO deployments VALUES (:provider, :deployment_id, :model, :serving_model, :state,
                 :raw_state, :hardware, :usd_per_hour, COALESCE(:created_at, :now), :now,
                 CASE WHEN :state = 'stopped' THEN :now END, :record)
               ON CONFLICT (provider, deployment_id) DO UPDATE SET
                 model = excluded.model, serving_model = excluded.serving_model, state = excluded.state,
                 raw_state = excluded.raw_state, hardware = excluded.hardware,
                 usd_per_hour = excluded.usd_per_hour,
                 created_at = COALESCE(:created_at, deployments.created_at), updated_at = excluded.updated_at,
                 deleted_at = CASE WHEN excluded.state = 'stopped'
                                   THEN COALESCE(deployments.deleted_at, excluded.deleted_at) END,
                 record = excluded.record""",
            {"provider": deployment.provider, "deployment_id": deployment.deployment_id, "model": deployment.model,
             "serving_model": deployment.serving_model, "state": deployment.state,
             "raw_state": deployment.raw_state, "hardware": deployment.hardware,
             "usd_per_hour": deployment.usd_per_hour, "created_at": _iso(deployment.created_at), "now": now,
             "record": deployment.model_dump_json()},
        )

    def deployments(self, active_only: bool = True) -> Rows[Deployment]:
        """Known deployments, newest first; by default only those not yet stopped."""
        where = " WHERE deleted_at IS NULL" if active_only else ""
        rows = self.db.execute(f"SELECT provider, deployment_id, record FROM deployments{where} ORDER BY "
                               "created_at DESC, updated_at DESC").fetchall()
        return self._read_all("deployments", rows, ("provider", "deployment_id"), _deployment)

    def deployment_spans(self) -> Rows[DeploymentSpan]:
        """Every deployment the ledger knows, stopped ones included, oldest first, with the times it billed
        between (a row that cannot be read is left out: see :class:`Rows`)."""
        rows = self.db.execute("SELECT * FROM deployments ORDER BY created_at, provider, deployment_id").fetchall()
        return self._read_all("deployments", rows, ("provider", "deployment_id"), _deployment_span)

    def deployment(self, deployment_id: str, provider: str | None = None) -> Deployment:
        """The last saved state of a deployment, by its id or a prefix of it that names exactly one."""
        if not deployment_id.strip():
            raise DeploymentNotFound("Give a deployment id (or the start of one).")
        rows = self._find("deployments", "deployment_id", deployment_id, provider)
        if not rows:
            raise DeploymentNotFound(f"No deployment {deployment_id!r} in the ledger at {self.path}.")
        if len(rows) > 1:
            names = ", ".join(sorted(r["deployment_id"] for r in rows)[:5])
            raise DeploymentNotFound(f"{deployment_id!r} is the start of {len(rows)} deployments ({names}); "
                                     "give more of the id.")
        return self._read_one("deployments", rows[0], ("provider", "deployment_id"), _deployment)

    # -- costs ----------------------------------------------------------------------------------------
    def record_estimate(self, estimate: CostEstimate, intent_id: str | None = None) -> None:
        """Store a cost estimate made before (or while) submitting."""
        quantity: float | None = None
        unit: str | None = None
        if estimate.billable_tokens is not None:
            quantity, unit = estimate.billable_tokens, "training_tokens"
        elif estimate.quantities:
            quantity, unit = estimate.quantities[0].amount, estimate.quantities[0].kind
        self.db.execute(
            "INSERT INTO costs (recorded_at, provider, intent_id, kind, model, usd, usd_low, usd_high, quantity, "
            "unit, price_source, authoritative, basis) VALUES (?, ?, ?, 'estimate', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (self._now(), estimate.provider, intent_id, estimate.model, estimate.usd, estimate.usd_low,
             estimate.usd_high, quantity, unit, estimate.price_source, int(estimate.authoritative),
             estimate.basis),
        )

    def record_billed(self, record: JobRecord, *, usd: float | None, basis: str, price_source: str | None = None,
                      authoritative: bool = False) -> bool:
        """The billed figure of a job: one row per job, updated whenever the figure changes (a running or
        just-settled job's bill may still move; it is final only when the job is). Returns whether the
        row was written or changed."""
        tokens = record.trained_tokens
        if tokens is not None:
            quantity, unit = float(tokens), "training_tokens"
        elif record.billable:  # a bill in other units (GPU-hours, hardware-seconds): the first one counts
            quantity, unit = record.billable[0].amount, record.billable[0].kind
        else:
            quantity, unit = None, None
        with self._transaction():
            row = self.db.execute(
                "SELECT id, usd, quantity, unit, price_source, authoritative, basis, model, intent_id FROM costs "
                "WHERE provider = ? AND job_id = ? AND kind = 'billed' ORDER BY id DESC LIMIT 1",
                (record.provider, record.job_id),
            ).fetchone()
            if row is None:
                self.db.execute(
                    "INSERT INTO costs (recorded_at, provider, intent_id, job_id, kind, model, usd, quantity, "
                    "unit, price_source, authoritative, basis) VALUES (?, ?, ?, ?, 'billed', ?, ?, ?, ?, ?, ?, ?)",
                    (self._now(), record.provider, record.intent_id, record.job_id, record.base_model, usd,
                     quantity, unit, price_source, int(authoritative), basis),
                )
                return True
            values = (usd, quantity, unit, price_source, int(authoritative), basis, record.base_model,
                      record.intent_id or row["intent_id"])
            if tuple(row)[1:] == values:
                return False
            self.db.execute(
                "UPDATE costs SET recorded_at = ?, usd = ?, quantity = ?, unit = ?, price_source = ?, "
                "authoritative = ?, basis = ?, model = ?, intent_id = COALESCE(?, intent_id) WHERE id = ?",
                (self._now(), *values, row["id"]),
            )
            return True

    def costs(self, job_id: str | None = None, intent_id: str | None = None) -> Rows[CostRow]:
        """Cost rows, optionally of one job or one submission, oldest first (a row that cannot be read is
        left out)."""
        rows = self.db.execute("SELECT * FROM costs WHERE (? IS NULL OR job_id = ?) AND (? IS NULL OR "
                               "intent_id = ?) ORDER BY id", (job_id, job_id, intent_id, intent_id)).fetchall()
        return self._read_all("costs", rows, ("id",), _cost_row)

    def job_costs(self, record: JobRecord) -> Rows[CostRow]:
        """Every cost row of a job: the estimates made for its submission, then what was billed (a row
        that cannot be read is left out)."""
        rows = self.db.execute("SELECT * FROM costs WHERE (provider = ? AND job_id = ?) OR (? IS NOT NULL AND "
                               "intent_id = ?) ORDER BY id", (record.provider, record.job_id, record.intent_id,
                                                             record.intent_id)).fetchall()
        return self._read_all("costs", rows, ("id",), _cost_row)

    # -- the answer cache (evaluation) ----------------------------------------------------------------
    # Keyed by the endpoint (a name for the endpoint and its model), a hash of the generation settings and
    # the item. The endpoint key is stored redacted (it may be a URL), and looked up the same way.
    ANSWER_LOOKUP_CHUNK = 500  # item ids per query: well under SQLite's limit on bound parameters

    def cached_answers(self, endpoint_key: str, params_hash: str, item_ids: Iterable[str]) -> dict[str, CachedAnswer]:
        """The cached answers of these items, by item id (a row that cannot be read is left out, with a
        :class:`LedgerRowWarning`: that item is asked again)."""
        key = redact(endpoint_key)
        wanted = list(dict.fromkeys(item_ids))
        rows: list[sqlite3.Row] = []
        for start in range(0, len(wanted), self.ANSWER_LOOKUP_CHUNK):
            chunk = wanted[start:start + self.ANSWER_LOOKUP_CHUNK]
            rows += self.db.execute(
                f"SELECT * FROM answers WHERE endpoint_key = ? AND params_hash = ? AND item_id IN "
                f"({', '.join('?' * len(chunk))})", (key, params_hash, *chunk)).fetchall()
        found = self._read_all("answers", rows, ("endpoint_key", "params_hash", "item_id"), _cached_answer)
        return {answer.item_id: answer for answer in found}

    def save_answer(self, endpoint_key: str, params_hash: str, item_id: str, completion: Completion, *,
                    prompt_sha256: str, provider: str, model: str, params: GenerationParams) -> None:
        """Cache one successful answer (its text stored with any key it holds removed) and, when it was
        priced, record its cost as an ``inference`` row — both in one short transaction, so an answer is
        cached exactly when its cost is recorded, and a crash keeps every answer saved before it. An
        answer already cached for this key (a row that could not be read, or one to another prompt) is
        replaced."""
        key = redact(endpoint_key)
        usage = completion.usage
        with self._transaction():
            self.db.execute(
                """INSERT INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (endpoint_key, params_hash, item_id) DO UPDATE SET
                     prompt_sha256 = excluded.prompt_sha256, provider = excluded.provider,
                     model = excluded.model, params = excluded.params, text = excluded.text,
                     finish_reason = excluded.finish_reason, prompt_tokens = excluded.prompt_tokens,
                     completion_tokens = excluded.completion_tokens, cost_usd = excluded.cost_usd,
                     latency_s = excluded.latency_s, created_at = excluded.created_at""",
                (key, params_hash, item_id, prompt_sha256, provider, model, params.model_dump_json(),
                 redact(completion.text), completion.finish_reason, usage.prompt_tokens, usage.completion_tokens,
                 completion.cost_usd, completion.latency_s, self._now()),
            )
            if completion.cost_usd is not None:
                self.db.execute(
                    "INSERT INTO costs (recorded_at, provider, kind, model, usd, basis) "
                    "VALUES (?, ?, 'inference', ?, ?, ?)",
                    (self._now(), provider, model, completion.cost_usd,
                     f"answer to item {item_id} from {key}: {usage.prompt_tokens} input + "
                     f"{usage.completion_tokens} output tokens"),
                )

    def spend(self) -> dict[str, float]:
        """Billed dollars per provider, all time: each job's latest bill once (a schema-1 ledger may hold
        two billed rows of one job, written by racing clients; both are kept, one is counted)."""
        rows = self.db.execute(
            "SELECT provider, SUM(usd) AS usd FROM costs WHERE id IN (SELECT MAX(id) FROM costs WHERE "
            "kind = 'billed' GROUP BY provider, job_id) GROUP BY provider").fetchall()
        return {r["provider"]: r["usd"] or 0.0 for r in rows}


__all__ = ["MIGRATIONS", "CachedAnswer", "CostRow", "DeploymentNotFound", "DeploymentSpan", "JobLink", "Ledger",
           "LedgerRowWarning", "Rows", "SkippedRow", "Submission", "SubmissionInProgress", "SubmissionState",
           "UnreadableRow"]
