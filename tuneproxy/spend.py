"""Spend: what the ledger says was paid, summed and grouped — the figures behind ``tuneproxy costs``.

:func:`summarize` is a pure function of ledger rows (and of ``now``, the one moment a running deployment is
counted up to); :func:`from_ledger` reads those rows. Three kinds of charge are counted:

- **training**: each job's latest ``billed`` row, once (the ledger updates a job's billed row as its bill
  moves; a schema-1 ledger may hold two, and the newest counts). It was incurred when that row was last
  written: when the job ended, or its bill last changed.
- **deployment**: hours up × the deployment's hourly price, from when it was created (the service's time,
  else when the ledger first saw it) until the ledger first saw it stopped. The ledger learns of a stop when
  it is told (``tuneproxy deployments delete`` or ``show``), so a deployment stopped elsewhere is counted
  until then; one not seen stopped is still billing and is counted up to ``now``. The ledger keeps only the
  latest hourly price, so a price that changed is applied to all the hours. Hours are split at UTC month
  boundaries.
- **inference**: the evaluation's priced answers (``inference`` rows).

A charge whose dollars are unknown (a bill nothing could price, a deployment without an hourly price) is
counted as unknown — never as $0 — and listed in ``unknown``. Cost rows of kind ``deployment`` are not
written by this version and are not counted: deployments are counted by the hour from the deployments table.

Every job with a bill is compared with the last estimate recorded for its submission (``estimate`` rows,
by intent id): ``error_pct`` is ``(billed - estimate) / estimate × 100``.

JSON (``tuneproxy costs --json``, schema version 1; figures in USD, times ISO 8601 UTC)::

    {"schema_version": 1, "by": "provider" | "job" | "month" | "model", "since": "YYYY-MM-DD" | null,
     "now": time,
     "total": Sums,
     "groups": [{"key": str | null, ...Sums}],      # null: charges with no job (--by job) or model
     "jobs": [{"provider", "job_id", "model", "billed_usd", "billed_at", "authoritative", "basis",
               "estimate_usd", "estimate_low_usd", "estimate_high_usd", "error_pct", "within_range"}],
     "deployments": [{"provider", "deployment_id", "model", "job_id", "state", "usd_per_hour", "started_at",
                      "stopped_at", "running", "hours", "usd"}],
     "inference": [{"provider", "model", "job_id", "answers", "usd", "unknown"}],
     "unknown": [{"kind": "training" | "deployment" | "inference", "provider", "name", "why"}],
     "skipped": [{"table", "name", "where", "problem"}]}   # ledger rows that could not be read
    Sums = {"training_usd", "deployment_usd", "inference_usd", "total_usd", "unknown", "running"}

New fields may be added; none is renamed or removed without raising ``schema_version``.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from pydantic import BaseModel, Field

from tuneproxy.ledger import CostRow, DeploymentSpan, JobLink, Ledger, SkippedRow

SCHEMA_VERSION = 1
Grouping = Literal["provider", "job", "month", "model"]
GROUPINGS: tuple[str, ...] = get_args(Grouping)
ChargeKind = Literal["training", "deployment", "inference"]
UTC = dt.timezone.utc


class Sums(BaseModel):
    """Dollars by kind of charge, how many charges of unknown amount were left out of them, and how many
    deployments are still billing."""

    training_usd: float = 0.0
    deployment_usd: float = 0.0
    inference_usd: float = 0.0
    total_usd: float = 0.0
    unknown: int = Field(default=0, description="Charges of unknown amount, not in the sums (never counted as $0); a "
                                        "group by month counts a deployment's in each month it was up.")
    running: int = Field(default=0, description="Deployments still billing, counted up to now.")


class Group(Sums):
    """The sums of one group: one provider, job, UTC month (YYYY-MM) or model."""

    key: str | None = Field(description="The provider, job id, month or model; None for charges with no job "
                                        "(by job) or no recorded model (by model).")


class JobSpend(BaseModel):
    """A job's training bill (its latest, counted once) against the last estimate of its submission."""

    provider: str
    job_id: str
    model: str | None = Field(description="The base model it trained.")
    billed_usd: float | None
    billed_at: dt.datetime = Field(description="When the bill was last recorded: when it was incurred.")
    authoritative: bool = Field(description="The service's own figure (else its quantities priced).")
    basis: str = Field(description="How the bill was reached, in words.")
    estimate_usd: float | None = None
    estimate_low_usd: float | None = None
    estimate_high_usd: float | None = None
    error_pct: float | None = Field(default=None, description="(billed - estimate) / estimate × 100; None when either "
                                                      "is unknown or the estimate is $0.")
    within_range: bool | None = Field(default=None, description="Whether the bill fell in the estimate's range.")


class DeploymentSpend(BaseModel):
    """A deployment's hours up (within --since) and what they cost at its hourly price."""

    provider: str
    deployment_id: str
    model: str
    job_id: str | None = Field(description="The job whose tuned model it serves, where the ledger knows it.")
    state: str
    usd_per_hour: float | None
    started_at: dt.datetime = Field(description="From when it is counted (--since moves it later).")
    stopped_at: dt.datetime | None = Field(description="When the ledger first saw it stopped; None while running.")
    running: bool = Field(description="Still billing: counted up to now.")
    hours: float
    usd: float | None


class InferenceSpend(BaseModel):
    """The evaluation's priced answers from one model."""

    provider: str
    model: str | None
    job_id: str | None = Field(description="The job whose tuned model answered, where the ledger knows it.")
    answers: int
    usd: float
    unknown: int


class UnknownCharge(BaseModel):
    """A charge whose dollars are unknown: what it is, and why."""

    kind: ChargeKind
    provider: str
    name: str = Field(description="The job id, the deployment id, or the cost row's number.")
    why: str


class SpendReport(BaseModel):
    """What was spent, grouped; see the module's documentation for the JSON schema."""

    schema_version: int = SCHEMA_VERSION
    by: Grouping
    since: dt.date | None
    now: dt.datetime
    total: Sums
    groups: list[Group]
    jobs: list[JobSpend]
    deployments: list[DeploymentSpend]
    inference: list[InferenceSpend]
    unknown: list[UnknownCharge]
    skipped: list[SkippedRow]

    @property
    def empty(self) -> bool:
        """No charge at all (in the --since window)."""
        return not (self.jobs or self.deployments or self.inference)


@dataclass(frozen=True)
class _Charge:
    """One counted charge, or one month's part of a deployment: what the groups add up."""

    kind: ChargeKind
    provider: str
    job_id: str | None
    model: str | None
    when: dt.datetime
    usd: float | None
    running: bool = False


def _utc(moment: dt.datetime) -> dt.datetime:
    # the ledger writes aware UTC times; a service's naive time is taken as UTC
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _money(usd: float) -> float:
    return round(usd, 9)  # drops float noise (0.1 + 0.2), keeps a fraction of a cent


def job_spend(rows: Iterable[CostRow], provider: str, job_id: str, intent_id: str | None = None) -> JobSpend | None:
    """One job's training spend from cost rows (the ledger's, or a :attr:`TunedModel.costs`): its latest
    billed row, counted once, against the last estimate of its submission (the bill's intent id, else
    ``intent_id``). None while the job has no bill."""
    rows = list(rows)
    bills = [r for r in rows if r.kind == "billed" and r.provider == provider and r.job_id == job_id]
    if not bills:
        return None
    bill = max(bills, key=lambda r: r.id)
    intent = bill.intent_id or intent_id
    estimates = [r for r in rows if r.kind == "estimate" and intent is not None and r.intent_id == intent]
    estimate = max(estimates, key=lambda r: r.id) if estimates else None
    spend = JobSpend(provider=provider, job_id=job_id, model=bill.model, billed_usd=bill.usd,
                     billed_at=_utc(bill.recorded_at), authoritative=bill.authoritative, basis=bill.basis)
    if estimate is None:
        return spend
    error = within = None
    if bill.usd is not None and estimate.usd:
        error = round((bill.usd - estimate.usd) / estimate.usd * 100, 2)
    if bill.usd is not None and estimate.usd_low is not None and estimate.usd_high is not None:
        within = estimate.usd_low <= bill.usd <= estimate.usd_high
    return spend.model_copy(update={"estimate_usd": estimate.usd, "estimate_low_usd": estimate.usd_low,
                                    "estimate_high_usd": estimate.usd_high, "error_pct": error,
                                    "within_range": within})


def _month_parts(start: dt.datetime, end: dt.datetime) -> list[tuple[dt.datetime, float]]:
    """``[start, end)`` cut at UTC month boundaries: (each part's start, its hours); one part of no hours
    when it is empty (a deployment stopped as soon as seen, or a service's clock ahead of ``now``)."""
    if start >= end:
        return [(start, 0.0)]
    parts = []
    while start < end:
        following = (start.replace(day=1, hour=0, minute=0, second=0, microsecond=0) + dt.timedelta(days=32)
                     ).replace(day=1)
        stop = min(end, following)
        parts.append((start, (stop - start).total_seconds() / 3600))
        start = stop
    return parts


class _Attribution:
    """Which job a deployment or an answer belongs to: the job whose tuned model it serves or is."""

    def __init__(self, jobs: Iterable[JobLink], deployments: Iterable[DeploymentSpan]) -> None:
        self.tuned = {(j.provider, j.tuned_model): j.job_id for j in jobs if j.tuned_model}
        self.serving = {(d.provider, d.serving_model): d.model for d in deployments if d.serving_model}

    def job_of(self, provider: str, model: str | None) -> str | None:
        if model is None:
            return None
        found = self.tuned.get((provider, model))
        served = self.serving.get((provider, model))
        return found or (self.tuned.get((provider, served)) if served else None)


def _deployment(span: DeploymentSpan, job_id: str | None, since: dt.datetime | None, now: dt.datetime
                ) -> tuple[DeploymentSpend, list[_Charge]] | None:
    """A deployment's spend within the window, with its month parts; None when it was not up in it."""
    running = span.deleted_at is None
    start = _utc(span.created_at)
    end = now if span.deleted_at is None else _utc(span.deleted_at)
    if since is not None:
        if end <= since:
            return None
        start = max(start, since)
    parts = _month_parts(start, end)
    hours = math.fsum(h for _, h in parts)
    rate = span.usd_per_hour
    charges = [_Charge("deployment", span.provider, job_id, span.model, when, None if rate is None else h * rate,
                       running=running and i == len(parts) - 1) for i, (when, h) in enumerate(parts)]
    spend = DeploymentSpend(provider=span.provider, deployment_id=span.deployment_id, model=span.model,
                            job_id=job_id, state=span.state, usd_per_hour=rate, started_at=start,
                            stopped_at=None if running else end, running=running, hours=round(hours, 6),
                            usd=None if rate is None else _money(hours * rate))
    return spend, charges


def _key(charge: _Charge, by: Grouping) -> str | None:
    if by == "month":
        return charge.when.strftime("%Y-%m")
    return {"provider": charge.provider, "job": charge.job_id, "model": charge.model}[by]


def _sums(charges: Sequence[_Charge]) -> Sums:
    def total(kind: str | None) -> float:
        return _money(math.fsum(c.usd for c in charges if c.usd is not None and kind in (None, c.kind)))

    return Sums(training_usd=total("training"), deployment_usd=total("deployment"),
                inference_usd=total("inference"), total_usd=total(None),
                unknown=sum(c.usd is None for c in charges), running=sum(c.running for c in charges))


def _groups(charges: list[_Charge], by: Grouping) -> list[Group]:
    grouped: dict[str | None, list[_Charge]] = defaultdict(list)
    for charge in charges:
        grouped[_key(charge, by)].append(charge)
    groups = [Group(key=key, **_sums(members).model_dump()) for key, members in grouped.items()]
    if by == "month":
        return sorted(groups, key=lambda g: g.key or "")
    # the most spent first; a group with no key (no job, no model) last among equals
    return sorted(groups, key=lambda g: (-g.total_usd, g.key is None, g.key or ""))


_Counted = tuple[list[_Charge], list[UnknownCharge]]


def _training(costs: list[CostRow], intents: dict[tuple[str, str], str | None], since: dt.datetime | None
              ) -> tuple[list[JobSpend], _Counted]:
    """Each billed job's spend (its latest bill, against its submission's last estimate), billed in the window."""
    bills: dict[tuple[str, str], list[CostRow]] = defaultdict(list)
    estimates: dict[str, list[CostRow]] = defaultdict(list)
    for row in costs:
        if row.kind == "billed" and row.job_id is not None:
            bills[(row.provider, row.job_id)].append(row)
        elif row.kind == "estimate" and row.intent_id is not None:
            estimates[row.intent_id].append(row)
    jobs, charges, unknown = [], [], []
    for (provider, job_id), rows in bills.items():
        intent = max(rows, key=lambda r: r.id).intent_id or intents.get((provider, job_id))
        job = job_spend(rows + estimates.get(intent or "", []), provider, job_id, intent)
        assert job is not None  # it has a bill
        if since is not None and job.billed_at < since:
            continue
        jobs.append(job)
        charges.append(_Charge("training", provider, job_id, job.model, job.billed_at, job.billed_usd))
        if job.billed_usd is None:
            unknown.append(UnknownCharge(kind="training", provider=provider, name=job_id, why=job.basis))
    return jobs, (charges, unknown)


def _deployments(spans: list[DeploymentSpan], attribution: _Attribution, since: dt.datetime | None,
                 now: dt.datetime) -> tuple[list[DeploymentSpend], _Counted]:
    """Each deployment up in the window, with its month parts."""
    spent, charges, unknown = [], [], []
    for span in spans:
        counted = _deployment(span, attribution.job_of(span.provider, span.model), since, now)
        if counted is None:
            continue
        spend, parts = counted
        spent.append(spend)
        charges += parts
        if spend.usd is None:
            unknown.append(UnknownCharge(kind="deployment", provider=span.provider, name=span.deployment_id,
                                         why="no hourly price recorded"))
    return spent, (charges, unknown)


def _inference(costs: list[CostRow], attribution: _Attribution, since: dt.datetime | None
               ) -> tuple[list[InferenceSpend], _Counted]:
    """The evaluation's answers recorded in the window, summed per model."""
    answers: dict[tuple[str, str | None], list[CostRow]] = defaultdict(list)
    charges, unknown = [], []
    for row in costs:
        if row.kind != "inference" or (since is not None and _utc(row.recorded_at) < since):
            continue
        answers[(row.provider, row.model)].append(row)
        charges.append(_Charge("inference", row.provider, attribution.job_of(row.provider, row.model), row.model,
                               _utc(row.recorded_at), row.usd))
        if row.usd is None:
            unknown.append(UnknownCharge(kind="inference", provider=row.provider, name=f"cost row {row.id}",
                                         why=row.basis))
    spent = [InferenceSpend(provider=provider, model=model, job_id=attribution.job_of(provider, model),
                            answers=len(rows), usd=_money(math.fsum(r.usd for r in rows if r.usd is not None)),
                            unknown=sum(r.usd is None for r in rows))
             for (provider, model), rows in answers.items()]
    return spent, (charges, unknown)


def summarize(costs: Iterable[CostRow], deployments: Iterable[DeploymentSpan], jobs: Iterable[JobLink] = (), *,
              now: dt.datetime, by: Grouping = "provider", since: dt.date | None = None,
              skipped: Iterable[SkippedRow] = ()) -> SpendReport:
    """What was spent, from ledger rows: training bills, deployment hours (a running one up to ``now``)
    and evaluation answers, grouped ``by`` provider, job, UTC month or model, counting only what was
    incurred on or after ``since`` (a UTC date). ``jobs`` tie deployments and answers to the job whose
    tuned model they serve, and bills to their submission's estimates; ``skipped`` (rows the ledger could
    not read) is passed through, so a reader knows the figures leave something out."""
    if by not in GROUPINGS:
        raise ValueError(f"by must be one of {', '.join(GROUPINGS)}, not {by!r}")
    now = _utc(now)
    start = dt.datetime.combine(since, dt.time(), tzinfo=UTC) if since else None
    costs, deployments, jobs = list(costs), list(deployments), list(jobs)
    attribution = _Attribution(jobs, deployments)
    spent_jobs, training = _training(costs, {(j.provider, j.job_id): j.intent_id for j in jobs}, start)
    spent_deployments, serving = _deployments(deployments, attribution, start, now)
    inference, answers = _inference(costs, attribution, start)
    charges = training[0] + serving[0] + answers[0]
    unknown = training[1] + serving[1] + answers[1]
    # a deployment split across months is one charge of the total, however many groups it is part of
    total = _sums(charges).model_copy(update={"unknown": len(unknown),
                                              "running": sum(d.running for d in spent_deployments)})
    return SpendReport(by=by, since=since, now=now, total=total, groups=_groups(charges, by), jobs=spent_jobs,
                       deployments=spent_deployments, inference=inference, unknown=unknown, skipped=list(skipped))


def from_ledger(ledger: Ledger, *, by: Grouping = "provider", since: dt.date | None = None,
                now: dt.datetime | None = None) -> SpendReport:
    """:func:`summarize` over every cost, deployment and job of ``ledger`` (``now``: the ledger's clock
    unless given). A row that cannot be read is left out, with a :class:`~tuneproxy.ledger.LedgerRowWarning`,
    and named in the report's ``skipped``."""
    costs, deployments, jobs = ledger.costs(), ledger.deployment_spans(), ledger.job_links()
    return summarize(costs, deployments, jobs, now=now or ledger.clock(), by=by, since=since,
                     skipped=[*costs.skipped, *deployments.skipped, *jobs.skipped])


__all__ = ["GROUPINGS", "SCHEMA_VERSION", "DeploymentSpend", "Group", "Grouping", "InferenceSpend", "JobSpend",
           "SpendReport", "Sums", "UnknownCharge", "from_ledger", "job_spend", "summarize"]
