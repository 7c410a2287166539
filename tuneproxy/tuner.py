"""The facade: ``Tuner(provider=..., model=..., **hyperparameters).fit(data)``.

``fit`` is the one path a job travels, each step one call downwards:
config → load & validate (stop on errors) → split holdout → estimate → budget guard → intent row in the
ledger → upload → (the service's own estimate, guarded again) → submit → job id in the ledger → follow the
job (live display) → succeeded: billed cost recorded, :class:`TunedModel` returned.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tuneproxy import registry
from tuneproxy.contract import (
    PORTABLE_HYPERPARAMETERS,
    CostEstimate,
    Hyperparameters,
    JobRecord,
    JobSpec,
    Provider,
    UploadedFile,
    utc_now,
)
from tuneproxy.dataset.convert import write_jsonl
from tuneproxy.dataset.examples import Example
from tuneproxy.dataset.split import split_holdout
from tuneproxy.dataset.validate import Report, first_findings, load_examples, validate
from tuneproxy.display import JobDisplay
from tuneproxy.errors import (
    BudgetExceeded,
    ConfigError,
    DatasetError,
    ProviderError,
    ProviderSunset,
    SubmissionUncertain,
)
from tuneproxy.jobs import Job, TunedModel
from tuneproxy.ledger import Ledger

Data = str | Path | Iterable[dict[str, Any]]


class SunsetWarning(UserWarning):
    """The provider stops accepting new jobs soon."""


class DatasetWarning(UserWarning):
    """The data passed validation with warnings."""


def supported_by() -> dict[str, list[str]]:
    """Portable hyperparameter → display names of the registered providers that support it."""
    table: dict[str, list[str]] = {name: [] for name in PORTABLE_HYPERPARAMETERS}
    for name in registry.names():
        try:
            caps = registry.provider_class(name).capabilities
        except ConfigError:
            continue
        for param in caps.parameters:
            table.setdefault(param, []).append(caps.display_name)
    return table


def _stated(estimate: CostEstimate, report: Report) -> CostEstimate:
    """The estimate with the token count's error bound said next to it, when the count is not exact."""
    stats = report.stats
    if estimate.authoritative or stats is None or stats.exact:
        return estimate
    note = f" Token count estimated with {stats.tokenizer}: the figure is good to ±{stats.error_bound:.0%}."
    return estimate.model_copy(update={"basis": estimate.basis + note})


class Tuner:
    """Fine-tunes ``model`` on ``provider`` with portable hyperparameters (``epochs=3``, ``lora_rank=16``…).

    Options: ``budget_usd`` refuses a job whose estimate is higher; ``poll_interval`` (seconds) paces
    the wait (default: the provider's own cadence); ``show_progress`` draws the live display;
    ``provider_options`` go to the provider (e.g. an injected ``transport``); ``api_key`` overrides the
    provider's environment variable.
    """

    def __init__(self, provider: str, model: str, *, budget_usd: float | None = None,
                 poll_interval: float | None = None, show_progress: bool = True, api_key: str | None = None,
                 ledger: Ledger | None = None, clock: Any = utc_now,
                 provider_options: dict[str, Any] | None = None, **hyperparameters: Any) -> None:
        unknown = sorted(set(hyperparameters) - set(PORTABLE_HYPERPARAMETERS))
        if unknown:
            raise ConfigError(f"Unknown setting(s): {', '.join(unknown)}. Hyperparameters use portable names: "
                              f"{', '.join(PORTABLE_HYPERPARAMETERS)}.")
        try:
            self.hyperparameters = Hyperparameters(**hyperparameters)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"Invalid hyperparameter: {problems}.") from None
        self.provider_name = provider
        self.model = model
        self.budget_usd = budget_usd
        self.show_progress = show_progress
        self.clock = clock
        self._ledger = ledger
        self._provider_class = registry.provider_class(provider)
        self.poll_interval = self._provider_class.capabilities.poll_seconds if poll_interval is None else poll_interval
        self._provider_class.translate(self.hyperparameters, supported_by())
        self._api_key = api_key
        self._options = dict(provider_options or {})
        reserved = sorted({"api_key", "clock"} & set(self._options))
        if reserved:
            raise ConfigError(f"{', '.join(reserved)} cannot be a provider option: pass it to Tuner itself "
                              "(the key comes from the environment).")
        self._provider: Provider | None = None

    def __repr__(self) -> str:
        return f"<Tuner {self.provider_name}:{self.model} {self.hyperparameters.given()}>"

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            self._ledger = Ledger()
        return self._ledger

    @property
    def provider(self) -> Provider:
        """The backend, built on first use (so a missing key is reported only when it is needed)."""
        if self._provider is None:
            self._provider = registry.create(self.provider_name, api_key=self._api_key, clock=self.clock,
                                             **self._options)
        return self._provider

    # -- the steps --------------------------------------------------------------------------------------
    def check_sunset(self) -> None:
        """Raise :class:`ProviderSunset` after the provider's cut-off date; warn with the date before it."""
        caps = self._provider_class.capabilities
        if not caps.sunset:
            return
        today = self.clock().date()
        if today >= caps.sunset:
            raise ProviderSunset(f"{caps.display_name} stopped accepting new fine-tuning jobs on "
                                 f"{caps.sunset.isoformat()}. {caps.sunset_note} Choose another provider "
                                 "(for example provider='together' or provider='local').".replace("  ", " "))
        days = (caps.sunset - today).days
        warnings.warn(f"{caps.display_name} stops accepting new fine-tuning jobs on {caps.sunset.isoformat()} "
                      f"({days} days from now); plan a move to another provider.", SunsetWarning, stacklevel=3)

    def validate(self, data: Data, holdout: Data | None = None, check_size: bool = True) -> Report:
        """Validate ``data`` against this provider's rules and this model's tokenizer and context."""
        caps = self._provider_class.capabilities
        return validate(data, rules=caps.rules, service=caps.display_name, model=self.model, holdout=holdout,
                        check_size=check_size)

    def estimate(self, data: Data) -> CostEstimate:
        """What fine-tuning on ``data`` would cost, before anything is uploaded or paid (no key needed
        for a price-table estimate; the service's own figure comes once the data is uploaded in ``fit``)."""
        report = self._checked(data, None)
        provider = self._provider or registry.create(self.provider_name, api_key=self._api_key, require_key=False,
                                                     clock=self.clock, **self._options)
        return self._preflight(provider, report)

    def fit(self, data: Data, holdout: Data | float | int | None = None, *, wait: bool = True,
            seed: int = 0, stratify: str | None = None) -> TunedModel | Job:
        """Fine-tune on ``data``; returns the :class:`TunedModel` (``wait=False``: the :class:`Job`).

        ``holdout`` is a validation set (path or records), or a fraction/count of ``data`` to hold out
        (seeded, stratified by the metadata key ``stratify`` when given).
        """
        self.check_sunset()
        train, held, report = self._prepare(data, holdout, seed, stratify)
        estimate = self._preflight(self.provider, report)
        self._guard(estimate)
        fingerprint = self._fingerprint(train, held)
        pending = self.ledger.unfinished_intent(self.provider_name, fingerprint)
        with JobDisplay(enabled=self.show_progress) as display:
            found = self._reconcile(pending.intent_id) if pending else None
            if found is not None:
                job = Job(self.provider, found, self.ledger, self.poll_interval)
            else:
                intent_id = pending.intent_id if pending else self.ledger.record_intent(
                    self.provider_name, self.model, fingerprint, self._request(data, train, held)).intent_id
                self.ledger.record_estimate(estimate, intent_id)
                job = self._submit(intent_id, train, held, report, display)
            if not wait:
                return job
            job.wait(on_update=display)
        return job.result()

    # -- helpers ----------------------------------------------------------------------------------------
    def _preflight(self, provider: Provider, report: Report) -> CostEstimate:
        """The provider's own objections to this job (raised), then its estimate before any upload."""
        spec = self._spec(training_file="", intent_id="", fmt=report.format or "chat")
        problems = provider.check(spec)
        if problems:
            raise ConfigError(" ".join(problems))
        return _stated(provider.estimate(report.stats, spec), report)

    def _checked(self, data: Data, holdout: Data | None, what: str = "data", warn: bool = True) -> Report:
        report = self.validate(data, holdout, check_size=what == "data")
        if not report.ok:
            shown = "\n".join(f"  line {f.line}: {f.code} {f.message}" for f in first_findings(report))
            raise DatasetError(f"The {what} has {report.errors} error(s); nothing was uploaded. First ones:\n{shown}\n"
                               f"Run `tuneproxy validate {report.source} --provider {self.provider_name}` for all.",
                               findings=report.findings)
        if report.warnings and warn:
            warnings.warn(f"The {what} passed with {report.warnings} warning(s): "
                          f"{', '.join(sorted(report.counts))}. `tuneproxy validate` shows them.",
                          DatasetWarning, stacklevel=3)
        return report

    def _prepare(self, data: Data, holdout: Data | float | int | None, seed: int,
                 stratify: str | None) -> tuple[list[Example], list[Example], Report]:
        if isinstance(holdout, (float, int)) and not isinstance(holdout, bool):
            self._checked(data, None)
            train, held = split_holdout(load_examples(data), holdout, seed=seed, stratify=stratify)
            # the training part again, for its own token statistics and the leakage check
            report = self._checked([ex.record for ex in train], [ex.record for ex in held], warn=False)
            return train, held, report
        report = self._checked(data, holdout)
        held: list[Example] = []
        if holdout is not None:
            self._checked(holdout, None, what="holdout")
            held = load_examples(holdout)
        return load_examples(data), held, report

    def _spec(self, training_file: str, intent_id: str, validation_file: str | None = None,
              fmt: str = "chat") -> JobSpec:
        return JobSpec(model=self.model, training_file=training_file, validation_file=validation_file,
                       format=fmt, hyperparameters=self.hyperparameters, intent_id=intent_id)

    def _guard(self, estimate: CostEstimate) -> None:
        if self.budget_usd is not None and estimate.usd is not None and estimate.usd > self.budget_usd:
            raise BudgetExceeded(f"The estimate is ${estimate.usd:.2f} ({estimate.basis}), over the budget of "
                                 f"${self.budget_usd:.2f}. Raise the budget, use fewer epochs or less data.")

    def _fingerprint(self, train: list[Example], held: list[Example]) -> str:
        digest = hashlib.sha256()
        digest.update(json.dumps([self.provider_name, self.model, self.hyperparameters.given()]).encode())
        for ex in train + [Example("text", {"text": "--holdout--"})] + held:
            digest.update(json.dumps(ex.record, sort_keys=True).encode())
        return digest.hexdigest()

    def _request(self, data: Data, train: list[Example], held: list[Example]) -> dict[str, Any]:
        return {"data": str(data) if isinstance(data, (str, Path)) else "<records>", "examples": len(train),
                "holdout": len(held), "hyperparameters": self.hyperparameters.given()}

    def _reconcile(self, intent_id: str) -> JobRecord | None:
        """Look for the job an earlier, unconfirmed submission may have created."""
        found = self.provider.find_job(intent_id)
        if found is not None:
            found.intent_id = intent_id
            self.ledger.save_job(found)
            self.ledger.mark_submission(intent_id, "submitted", job_id=found.job_id)
        return found

    def _upload(self, intent_id: str, examples: list[Example], purpose: str, display: JobDisplay) -> UploadedFile:
        """Write the examples in the provider's format to a private temporary file, upload it, delete it
        (a copy of training data left behind could hold the personal data the scan warned about)."""
        with tempfile.TemporaryDirectory(prefix=f"tuneproxy-{intent_id[:8]}-") as folder:
            path = Path(folder) / f"{purpose}.jsonl"
            size = write_jsonl(examples, path, self.provider.serialize)
            display.stage(f"uploading {purpose} data to {self.provider_name} ({len(examples)} examples, "
                          f"{size:,} bytes)")
            return self.provider.upload(path, purpose)  # type: ignore[arg-type]

    def _submit(self, intent_id: str, train: list[Example], held: list[Example], report: Report,
                display: JobDisplay) -> Job:
        fmt = report.format or "chat"
        try:
            training = self._upload(intent_id, train, "train", display)
            validation = self._upload(intent_id, held, "validation", display) if held else None
            spec = self._spec(training.id, intent_id, validation.id if validation else None, fmt)
            display.stage(f"estimating and submitting to {self.provider_name}")
            refined = self.provider.estimate(report.stats, spec)
            if refined.authoritative:
                self.ledger.record_estimate(refined, intent_id)
                self._guard(refined)
            record = self.provider.submit(spec)
        except SubmissionUncertain:
            record = self._reconcile(intent_id)
            if record is None:
                self.ledger.mark_submission(intent_id, "uncertain")
                raise ProviderError(f"{self.provider_name} did not confirm the job and it cannot be found yet. "
                                    "Run the same fit again in a minute: tuneproxy looks for the job before "
                                    "submitting, so it will not pay twice.", provider=self.provider_name) from None
            return Job(self.provider, record, self.ledger, self.poll_interval)
        except BudgetExceeded as exc:
            self.ledger.mark_submission(intent_id, "refused", error=str(exc))
            raise
        except ProviderError as exc:
            self.ledger.mark_submission(intent_id, "failed", error=str(exc))
            raise
        record.intent_id = intent_id
        self.ledger.save_job(record)
        self.ledger.mark_submission(intent_id, "submitted", job_id=record.job_id)
        return Job(self.provider, record, self.ledger, self.poll_interval)


