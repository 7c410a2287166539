"""A job handle that follows a submitted job and keeps the ledger up to date, and the tuned model.

Every read goes through :class:`Job`, so whatever the provider reports — status, events, the final bill —
lands in the ledger the moment it is seen: a client that dies mid-wait loses nothing, and
:meth:`Job.attach` picks the job up again from the ledger.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tuneproxy import registry
from tuneproxy.contract import Endpoint, JobEvent, JobRecord, JobStatus, Provider
from tuneproxy.errors import JobFailed
from tuneproxy.ledger import Ledger

Update = Callable[[JobRecord, list[JobEvent]], None]


class Job:
    """A fine-tuning job on some backend: refresh it, read its events, wait for it, cancel it."""

    def __init__(self, provider: Provider, record: JobRecord, ledger: Ledger | None = None,
                 poll_interval: float = 10.0, sleep: Callable[[float], None] = time.sleep) -> None:
        self.provider = provider
        self.record = record
        self.ledger = ledger or Ledger()
        self.poll_interval = poll_interval
        self.sleep = sleep

    def __repr__(self) -> str:
        return f"<Job {self.record.provider}:{self.id} {self.record.status.value}>"

    @property
    def id(self) -> str:
        return self.record.job_id

    @property
    def status(self) -> JobStatus:
        return self.record.status

    @classmethod
    def attach(cls, job_id: str, *, ledger: Ledger | None = None, api_key: str | None = None,
               poll_interval: float | None = None, **provider_options: Any) -> Job:
        """Reattach to a job the ledger knows (after a restart), by id or unique id prefix."""
        ledger = ledger or Ledger()
        record = ledger.job(job_id)
        provider = registry.create(record.provider, api_key=api_key, **provider_options)
        interval = provider.capabilities.poll_seconds if poll_interval is None else poll_interval
        return cls(provider, record, ledger, interval)

    def refresh(self) -> JobRecord:
        """Ask the backend for the job's state; save it, and the final bill once the job has ended."""
        record = self.provider.refresh(self.id)
        record.intent_id = record.intent_id or self.record.intent_id
        self.record = record
        self.ledger.save_job(record)
        if record.status.terminal and (record.billed_usd is not None or record.trained_tokens is not None):
            basis = f"{record.provider} billed figure for {record.job_id}"
            if record.billed_usd is None:
                basis += f": {record.trained_tokens:,} billed tokens, no price known to turn them into dollars"
            self.ledger.record_billed(record, basis=basis)
        return record

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
        record = self.provider.cancel(self.id)
        record.intent_id = record.intent_id or self.record.intent_id
        self.record = record
        self.ledger.save_job(record)
        return record

    def result(self) -> TunedModel:
        """The tuned model of a succeeded job; a failed or cancelled job raises :class:`JobFailed`."""
        record = self.record
        if record.status is JobStatus.SUCCEEDED and record.fine_tuned_model:
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


class TunedModel:
    """The result of a fine-tuning job: its name, where it came from, what it cost, how it trained."""

    def __init__(self, provider: Provider, record: JobRecord, ledger: Ledger) -> None:
        self._provider = provider
        self.record = record
        self._ledger = ledger

    def __repr__(self) -> str:
        return f"<TunedModel {self.provider}:{self.model}>"

    @property
    def provider(self) -> str:
        return self.record.provider

    @property
    def model(self) -> str:
        return self.record.fine_tuned_model or ""

    @property
    def base_model(self) -> str:
        return self.record.model

    @property
    def job_id(self) -> str:
        return self.record.job_id

    @property
    def endpoint(self) -> Endpoint:
        """Generates with the tuned model."""
        return self._provider.endpoint(self.model)

    @property
    def base_endpoint(self) -> Endpoint:
        """Generates with the base model, loaded the same way, for comparison."""
        return self._provider.endpoint(self.base_model)

    @property
    def metrics(self) -> list[JobEvent]:
        """The job's events that carry training metrics (step, epoch, losses), oldest first."""
        return [e for e in self._ledger.events(self.provider, self.job_id)
                if e.train_loss is not None or e.valid_loss is not None]

    @property
    def costs(self) -> list[dict[str, Any]]:
        """Every cost row for this job: estimates before it, the billed figure after."""
        return self._ledger.job_costs(self.record)
