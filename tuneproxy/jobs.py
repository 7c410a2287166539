"""A job handle that follows a submitted job and keeps the ledger up to date.

Every read goes through :class:`Job`, so whatever the provider reports — status, events, the bill — lands
in the ledger the moment it is seen: a client that dies mid-wait loses nothing, and :meth:`Job.attach`
picks the job up again from the ledger, with the provider built from the options the job was
submitted with.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tuneproxy import registry
from tuneproxy.contract import JobEvent, JobRecord, JobStatus, Provider, Resumable
from tuneproxy.costs import bill_for
from tuneproxy.errors import ConfigError, JobFailed
from tuneproxy.ledger import Ledger
from tuneproxy.tuned import TunedModel

Update = Callable[[JobRecord, list[JobEvent]], None]


class Job:
    """A fine-tuning job on some backend: refresh it, read its events, wait for it, cancel it."""

    def __init__(self, provider: Provider, record: JobRecord, ledger: Ledger | None = None,
                 poll_interval: float | None = None, sleep: Callable[[float], None] | None = None) -> None:
        self.provider = provider
        self.record = record
        self.ledger = ledger or Ledger()
        self.poll_interval = provider.capabilities.poll_seconds if poll_interval is None else poll_interval
        self.sleep = sleep or provider.sleep

    def __repr__(self) -> str:
        return f"<Job {self.record.provider}:{self.id} {self.record.status.value}>"

    @property
    def id(self) -> str:
        """The backend's job id."""
        return self.record.job_id

    @property
    def status(self) -> JobStatus:
        """The status last seen (call :meth:`refresh` to ask again)."""
        return self.record.status

    @classmethod
    def attach(cls, job_id: str, *, ledger: Ledger | None = None, api_key: str | None = None,
               poll_interval: float | None = None, transport: Any = None,
               sleep: Callable[[float], None] = time.sleep) -> Job:
        """Reattach to a job the ledger knows (after a restart), by id or unique id prefix. The provider
        is rebuilt with the options stored with the job's submission."""
        ledger = ledger or Ledger()
        record = ledger.job(job_id)
        submission = ledger.submission(record.intent_id) if record.intent_id else None
        provider = registry.create(record.provider, submission.options if submission else None, api_key=api_key,
                                   transport=transport, sleep=sleep)
        return cls(provider, record, ledger, poll_interval)

    def _keep(self, record: JobRecord) -> JobRecord:
        record.intent_id = record.intent_id or self.record.intent_id
        self.record = record
        self.ledger.save_job(record)
        return record

    def refresh(self) -> JobRecord:
        """Ask the backend for the job's state and save it; when the job ends, save its bill (the service's
        own figure, or what it counted priced with the catalogue)."""
        previous, record = self.record, self.provider.refresh(self.id)
        record.intent_id = record.intent_id or previous.intent_id
        # the bill is written when the job ends (before its final state, so a crash in between writes it
        # again), and again only if the service's own figures change — never re-priced later
        if record.status.terminal and (not previous.status.terminal or record.billable != previous.billable
                                       or record.billed_usd != previous.billed_usd):
            bill = bill_for(self.provider, record)
            if bill is not None:
                self.ledger.record_billed(record, usd=bill.usd, basis=bill.basis, price_source=bill.price_source,
                                          authoritative=bill.authoritative)
        return self._keep(record)

    def events(self) -> list[JobEvent]:
        """Events the ledger has not seen yet (fetched from the backend and saved)."""
        after = self.ledger.last_event_id(self.record.provider, self.id)
        fresh = self.provider.events(self.id, after)
        self.ledger.save_events(self.record.provider, self.id, fresh)
        return fresh

    def history(self) -> list[JobEvent]:
        """Every event the ledger holds for this job, oldest first."""
        return self.ledger.events(self.record.provider, self.id)

    def wait(self, poll_interval: float | None = None, on_update: Update | None = None) -> JobRecord:
        """Poll until the job ends; ``on_update`` sees each state and the new events. Returns the record."""
        interval = self.poll_interval if poll_interval is None else poll_interval
        while True:
            record = self.refresh()
            fresh = self.events()
            if on_update:
                on_update(record, fresh)
            if record.status.terminal:
                return record
            if interval > 0:
                self.sleep(interval)

    def cancel(self) -> JobRecord:
        """Ask the backend to stop the job; the ledger records what it answered."""
        return self._keep(self.provider.cancel(self.id))

    def resume(self) -> JobRecord:
        """Restart a stopped job from its latest checkpoint, where the backend can (the local one)."""
        if not isinstance(self.provider, Resumable):
            raise ConfigError(f"{self.provider.capabilities.display_name} cannot resume a job; submit it again.")
        return self._keep(self.provider.resume(self.id))

    def result(self) -> TunedModel:
        """The tuned model of a succeeded job; a failed or cancelled job raises :class:`JobFailed`."""
        record = self.record
        if record.status is JobStatus.SUCCEEDED and record.tuned_model:
            return TunedModel(self.provider, record, self.ledger)
        if record.status is JobStatus.SUCCEEDED:
            raise JobFailed(f"Job {record.job_id} succeeded but {record.provider} reported no model name.",
                            provider=record.provider, raw=record.raw_status)
        if record.status in (JobStatus.FAILED, JobStatus.CANCELLED):
            what = record.error or f"the job ended as {record.raw_status}"
            raise JobFailed(f"Job {record.job_id} on {record.provider} {record.status.value}: {what}",
                            provider=record.provider, raw=record.raw_status)
        raise JobFailed(f"Job {record.job_id} is still {record.status.value}; wait for it first "
                        f"(`tuneproxy jobs wait {record.job_id}`).", provider=record.provider,
                        raw=record.raw_status)
