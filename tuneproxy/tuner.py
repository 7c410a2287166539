"""The facade: ``Tuner(provider=..., model=..., **hyperparameters).fit(data)``.

``fit`` is the one path a job travels, each step one call downwards:
config → load & validate (stop on errors) → split holdout → estimate → budget guard → intent row in the
ledger → upload → (the service's own estimate, guarded again) → submit → job id in the ledger → follow the
job (live display) → succeeded: billed cost recorded, :class:`TunedModel` returned.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

from pydantic import ValidationError

from tuneproxy import holdouts, registry
from tuneproxy.contract import (
    DEFAULT_EPOCHS,
    PORTABLE_HYPERPARAMETERS,
    Clock,
    CostEstimate,
    Format,
    Hyperparameters,
    JobRecord,
    JobSpec,
    JobStatus,
    Provider,
    ProviderOptions,
    Stats,
    UploadedFile,
    utc_now,
)
from tuneproxy.costs import price_estimate
from tuneproxy.dataset.convert import write_jsonl
from tuneproxy.dataset.examples import Example
from tuneproxy.dataset.split import split_holdout
from tuneproxy.dataset.validate import Report, first_findings, load_examples, token_stats, validate
from tuneproxy.display import JobDisplay
from tuneproxy.errors import (
    BudgetExceeded,
    ConfigError,
    DatasetError,
    MissingCredentials,
    NotConfirmed,
    ProviderError,
    ProviderSunset,
    SubmissionUncertain,
    config_error_from,
)
from tuneproxy.jobs import Job
from tuneproxy.ledger import Ledger, Submission, SubmissionInProgress
from tuneproxy.models import alternatives
from tuneproxy.models import resolve as resolve_model
from tuneproxy.paths import staging_folder
from tuneproxy.tokens import TokenCounter, counter_for
from tuneproxy.tuned import TunedModel

if TYPE_CHECKING:
    from tuneproxy.config import Settings
    from tuneproxy.desk import Desk

Data = str | Path | Iterable[dict[str, Any]]


class SunsetWarning(UserWarning):
    """The provider stops accepting new jobs soon."""


class DatasetWarning(UserWarning):
    """The data passed validation with warnings."""


# How often a fit waiting on another process's submission of the same request looks at the ledger again.
CLAIM_WAIT_SECONDS = 0.25


class ReattachedWarning(UserWarning):
    """``fit`` follows a job submitted earlier for the same request instead of submitting a new one."""


def supported_by() -> dict[str, list[str]]:
    """Portable hyperparameter → display names of the registered providers that support it (as each
    is built with its default options)."""
    table: dict[str, list[str]] = {name: [] for name in PORTABLE_HYPERPARAMETERS}
    for name in registry.names():
        try:
            caps = registry.provider_class(name)(None).capabilities
        except ConfigError:
            continue
        for param in caps.parameters:
            table.setdefault(param, []).append(caps.display_name)
    return table


class Tuner:
    """Fine-tunes ``model`` on ``provider`` with portable hyperparameters (``epochs=3``, ``lora_rank=16``…).

    ``model`` is a backend id or a portable name (``llama-3.1-8b-instruct``: ``tuneproxy models``); None trains
    the backend's default model (:attr:`model_choice` says which). Epochs not given are
    :data:`~tuneproxy.contract.DEFAULT_EPOCHS` on every backend.

    ``provider_options`` are the backend's own settings (its :class:`ProviderOptions`: ``tuneproxy
    providers`` lists them), validated now. ``budget_usd`` refuses a job whose estimate is higher;
    ``confirm`` is asked with the estimate before anything is uploaded (False: :class:`NotConfirmed`, nothing
    paid) — the CLI asks on a terminal unless ``--yes``;
    ``poll_interval`` (seconds) paces the wait (default: the provider's own cadence); ``show_progress``
    draws the live display; ``api_key`` overrides the provider's environment variable. ``transport``,
    ``clock``, ``sleep`` and ``ledger`` are seams for tests and embedding.
    """

    def __init__(self, provider: str, model: str | None = None, *, budget_usd: float | None = None,
                 poll_interval: float | None = None, show_progress: bool = True, api_key: str | None = None,
                 ledger: Ledger | None = None, clock: Clock = utc_now,
                 provider_options: ProviderOptions | Mapping[str, Any] | None = None, transport: Any = None,
                 sleep: Callable[[float], None] = time.sleep,
                 confirm: Callable[[CostEstimate], bool] | None = None, **hyperparameters: Any) -> None:
        unknown = sorted(set(hyperparameters) - set(PORTABLE_HYPERPARAMETERS))
        if unknown:
            raise ConfigError(f"Unknown setting(s): {', '.join(unknown)}. Hyperparameters use portable names: "
                              f"{', '.join(PORTABLE_HYPERPARAMETERS)}; backend settings go in provider_options.")
        try:
            self.hyperparameters = Hyperparameters(**hyperparameters)
        except ValidationError as exc:
            raise config_error_from(exc, "Invalid hyperparameter") from None
        if budget_usd is not None and budget_usd < 0:
            raise ConfigError(f"The budget must be zero or more USD, not {budget_usd}.")
        self.provider_name = provider
        self.budget_usd = budget_usd
        self.show_progress = show_progress
        self.clock = clock
        self._sleep = sleep
        self._ledger = ledger
        self.provider: Provider = registry.create(provider, provider_options, api_key=api_key, require_key=False,
                                                  transport=transport, clock=clock, sleep=sleep)
        caps = self.provider.capabilities
        self.model_choice = resolve_model(provider, model)
        self.model = self.model_choice.model_id
        self._check_trainable()
        if self.hyperparameters.epochs is None and "epochs" in caps.parameters:
            # the same default everywhere: what every estimate assumes is what every backend trains
            self.hyperparameters = self.hyperparameters.model_copy(update={"epochs": DEFAULT_EPOCHS})
        self.poll_interval = caps.poll_seconds if poll_interval is None else poll_interval
        self.provider.translate(self.hyperparameters, supported_by())
        self._counter: TokenCounter | None = None
        self.job: Job | None = None  # the job the last fit submitted or followed, once there is one
        self.confirm = confirm
        self.settings: Settings | None = None  # the merged settings, for a tuner made by from_config

    def __repr__(self) -> str:
        return f"<Tuner {self.provider_name}:{self.model} {self.hyperparameters.given()}>"

    def _check_trainable(self) -> None:
        """A model id the backend cannot fine-tune (a Llama id on OpenAI) is refused before anything else,
        naming the backends that offer the same model when the model table knows it."""
        caps = self.provider.capabilities
        if caps.trainable is None or re.fullmatch(caps.trainable, self.model):
            return
        elsewhere = {name: model_id for name, model_id in alternatives(self.model).items()
                     if name != self.provider_name}
        offered = (" The same model is offered by: " + ", ".join(f"{name} ({model_id})" for name, model_id
                                                                 in elsewhere.items()) + ".") if elsewhere else ""
        raise ConfigError(f"{caps.display_name} cannot fine-tune {self.model}: {caps.trainable_note}.{offered} "
                          f"`tuneproxy models --provider {self.provider_name}` lists the models it offers.")

    @property
    def ledger(self) -> Ledger:
        """The ledger this tuner records into (``$TUNEPROXY_HOME/state.db`` unless one was given)."""
        if self._ledger is None:
            self._ledger = Ledger(clock=self.clock)
        return self._ledger

    @property
    def counter(self) -> TokenCounter:
        """The token counter for this model, of the family the provider bills by."""
        if self._counter is None:
            self._counter = counter_for(self.model, self.provider.capabilities.tokenizer)
        return self._counter

    # -- the steps --------------------------------------------------------------------------------------
    def check_sunset(self) -> None:
        """Raise :class:`ProviderSunset` after the provider's cut-off date; warn with the date before it."""
        caps = self.provider.capabilities
        if not caps.sunset:
            return
        today = self.clock().date()
        if today >= caps.sunset:
            raise ProviderSunset(f"{caps.display_name} stopped accepting new fine-tuning jobs on "
                                 f"{caps.sunset.isoformat()}. {caps.sunset_note} Choose another provider "
                                 "(`tuneproxy providers` lists them).".replace("  ", " "),
                                 provider=self.provider_name)
        days = (caps.sunset - today).days
        warnings.warn(f"{caps.display_name} stops accepting new fine-tuning jobs on {caps.sunset.isoformat()} "
                      f"({days} days from now); plan a move to another provider.", SunsetWarning, stacklevel=3)

    def validate(self, data: Data, holdout: Data | None = None, check_size: bool = True) -> Report:
        """Validate ``data`` against this provider's rules and this model's tokenizer and context."""
        caps = self.provider.capabilities
        return validate(data, rules=caps.rules, service=caps.display_name, model=self.model, holdout=holdout,
                        check_size=check_size, counter=self.counter)

    def estimate(self, data: Data) -> CostEstimate:
        """What fine-tuning on ``data`` would cost, before anything is uploaded or paid (no key needed
        for a catalogue estimate; the service's own figure comes once the data is uploaded in ``fit``)."""
        return self._preflight(self._checked(data, None))

    @overload
    def fit(self, data: Data, holdout: Data | float | int | None = None, *, wait: Literal[True] = True,
            seed: int | None = None, stratify: str | None = None, resubmit: bool = False,
            reuse: bool = False) -> TunedModel:
        ...

    @overload
    def fit(self, data: Data, holdout: Data | float | int | None = None, *, wait: Literal[False],
            seed: int | None = None, stratify: str | None = None, resubmit: bool = False,
            reuse: bool = False) -> Job: ...

    @overload
    def fit(self, data: Data, holdout: Data | float | int | None = None, *, wait: bool,
            seed: int | None = None, stratify: str | None = None, resubmit: bool = False,
            reuse: bool = False) -> TunedModel | Job: ...

    def fit(self, data: Data, holdout: Data | float | int | None = None, *, wait: bool = True,
            seed: int | None = None, stratify: str | None = None, resubmit: bool = False,
            reuse: bool = False) -> TunedModel | Job:
        """Fine-tune on ``data``; returns the :class:`TunedModel` (``wait=False``: the :class:`Job`).

        ``holdout`` is a validation set (path or records), or a fraction/count of ``data`` to hold out
        (split with ``seed``, default 0, stratified by the metadata key ``stratify`` when given). A tuner made
        by :meth:`from_config` takes the ones not given here from its settings (the file's ``holdout``,
        ``holdout_seed``, ``stratify``).

        The same request (data, holdout, model, hyperparameters, provider) whose job was submitted and has
        not finished is followed, not submitted again (a :class:`ReattachedWarning` names the job);
        ``resubmit=True`` submits a new job anyway. A succeeded job of the same request is returned only
        with ``reuse=True``; otherwise a finished request is trained again.
        """
        if self.settings is not None:
            holdout = self.settings.holdout if holdout is None else holdout
            seed = self.settings.holdout_seed if seed is None else seed
            stratify = self.settings.stratify if stratify is None else stratify
        train, held, report = self._prepare(data, holdout, seed or 0, stratify)
        fingerprint = self._fingerprint(train, held)
        earlier = None if resubmit else self._earlier_job(fingerprint, reuse)
        if earlier is not None:
            return self._follow_earlier(earlier, wait)
        self.check_sunset()
        self._require_key()
        estimate = self._preflight(report)
        self._guard(estimate)
        if self.confirm is not None and not self.confirm(estimate):
            raise NotConfirmed(f"Not confirmed: nothing was uploaded or paid ({self.provider_name}, {self.model}).")
        claimed = self._claim(fingerprint, self._request(data, train, held), resubmit)
        if isinstance(claimed, JobRecord):
            return self._follow_earlier(claimed, wait)
        submission, fresh = claimed
        if held:  # kept with the job, so that evaluate() asks exactly what was held out
            holdouts.save(submission.intent_id, data, held, train)
        with JobDisplay(enabled=self.show_progress, clock=self.clock) as display:
            try:
                found = None if fresh else self._reconcile(submission.intent_id)
                if found is not None:
                    job = Job(self.provider, found, self.ledger, self.poll_interval)
                else:
                    self.ledger.record_estimate(estimate, submission.intent_id)
                    job = self._submit(submission.intent_id, train, held, report, display)
            finally:  # submitted, refused or interrupted: another process may reconcile it from now on
                self.ledger.release_claim(submission.intent_id)
            self.job = job
            if not wait:
                return job
            self._follow(job, display)
        return job.result()

    def _follow_earlier(self, earlier: JobRecord, wait: bool) -> TunedModel | Job:
        """Follow a job submitted before (by an earlier fit, or by another process just now) to its end."""
        job = self.job = Job(self.provider, earlier, self.ledger, self.poll_interval)
        if not wait:
            return job
        if not earlier.status.terminal:
            with JobDisplay(enabled=self.show_progress, clock=self.clock) as display:
                self._follow(job, display)
        return job.result()

    def _claim(self, fingerprint: str, request: dict[str, Any],
               resubmit: bool) -> tuple[Submission, bool] | JobRecord:
        """Claim the submission of this request; while another process is submitting the very same request
        (or submitted it since this fit looked), wait for it and return its job (or claim the request once
        that process gave up)."""
        told = False
        while True:
            try:
                return self.ledger.claim_intent(self.provider_name, self.model, fingerprint, request,
                                                self.provider.options.stored(), unless_running=not resubmit)
            except SubmissionInProgress as busy:
                if not told:
                    warnings.warn(f"Another tuneproxy process is submitting (or has just submitted) this same request "
                                  f"to {self.provider_name}: waiting for its job, to follow it instead of paying for "
                                  "another.",
                                  ReattachedWarning, stacklevel=4)
                    told = True
                self._sleep(CLAIM_WAIT_SECONDS)
                other = self.ledger.submission(busy.intent_id)
                if other is not None and other.state == "submitted" and other.job_id:
                    return self.ledger.job(other.job_id, self.provider_name)

    def _follow(self, job: Job, display: JobDisplay) -> None:
        """Wait for the job; a failure to follow it says the job itself goes on, and how to pick it up."""
        try:
            job.wait(on_update=display)
        except ProviderError as exc:
            exc.args = (f"{exc} Job {job.id} keeps running on {self.provider_name}: follow it with "
                        f"`tuneproxy jobs wait {job.id}`.",)
            raise

    # -- helpers ----------------------------------------------------------------------------------------
    def _earlier_job(self, fingerprint: str, reuse: bool) -> JobRecord | None:
        """The job already submitted for this same request that this fit should follow, if any."""
        earlier = self.ledger.submitted_job(self.provider_name, fingerprint)
        if earlier is None or (earlier.status.terminal and not (reuse and earlier.status is JobStatus.SUCCEEDED)):
            return None
        what = "succeeded" if earlier.status.terminal else "is still running"
        warnings.warn(f"Job {earlier.job_id} on {self.provider_name} was submitted earlier for this same request and "
                      f"{what}: following it instead of paying for another (resubmit=True / --new submits a "
                      "new job).", ReattachedWarning, stacklevel=4)
        return earlier

    def _require_key(self) -> None:
        """What submitting needs that an estimate does not: the key, and the backend's own settings."""
        credentials = self.provider.capabilities.credentials
        if credentials and not self.provider.api_key:
            raise MissingCredentials(self.provider.capabilities.display_name, credentials.env_var)
        problems = self.provider.submit_problems()
        if problems:
            raise ConfigError(" ".join(problems))

    def _preflight(self, report: Report) -> CostEstimate:
        """The provider's own objections to this job (raised), then its estimate before any upload."""
        assert report.stats is not None
        return self.estimate_from(report.stats, report.format or "chat")

    def estimate_from(self, stats: Stats, fmt: Format = "chat", *, check: bool = True) -> CostEstimate:
        """The estimate for data whose figures are already known (``stats``, examples of format ``fmt``): the
        provider's objections to the job raised first (``check=False``: not asked, as the cost desk does — a
        local backend's check loads the model), then its quantities priced by the core."""
        spec = self._spec(training_file="", intent_id="", fmt=fmt)
        problems = self.provider.check(spec) if check else []
        if problems:
            raise ConfigError(" ".join(problems))
        return price_estimate(self.provider, self.provider.estimate(stats, spec), stats)

    @staticmethod
    def estimate_all(data: Data, model: str | None = None, *, providers: Sequence[str] | None = None,
                     provider_options: Mapping[str, Mapping[str, Any]] | None = None,
                     **hyperparameters: Any) -> Desk:
        """The cost desk: ``data`` estimated on every backend that offers ``model`` (a portable name; None:
        each backend's default), the tokens counted once, rows sorted by cost (:mod:`tuneproxy.desk`)."""
        from tuneproxy.desk import estimate_all

        return estimate_all(data, model, providers=providers, provider_options=provider_options, **hyperparameters)

    def _checked(self, data: Data, holdout: Data | None, what: str = "data", warn: bool = True,
                 check_size: bool = True) -> Report:
        report = self.validate(data, holdout, check_size=check_size)
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
        """Validate once; then, for a fraction/count, split and count the training part's tokens alone."""
        if isinstance(holdout, (float, int)) and not isinstance(holdout, bool):
            report = self._checked(data, None)
            train, held = split_holdout(load_examples(data), holdout, seed=seed, stratify=stratify)
            return train, held, report.model_copy(update={"stats": token_stats(train, self.counter)})
        report = self._checked(data, holdout)
        held: list[Example] = []
        if holdout is not None:
            self._checked(holdout, None, what="holdout", check_size=False)
            held = load_examples(holdout)
        return load_examples(data), held, report

    def _spec(self, training_file: str, intent_id: str, validation_file: str | None = None,
              fmt: str = "chat") -> JobSpec:
        return JobSpec(model=self.model, training_file=training_file, validation_file=validation_file,
                       format=fmt, hyperparameters=self.hyperparameters, intent_id=intent_id)

    def _guard(self, estimate: CostEstimate) -> None:
        if self.budget_usd is None:
            return
        figure = estimate.usd_high if estimate.usd_high is not None else estimate.usd
        if figure is None:
            raise BudgetExceeded(f"A budget of ${self.budget_usd:.2f} was set but the cost cannot be told "
                                 f"({estimate.basis}), so it cannot be kept. Check the model name against the "
                                 "provider's, or drop the budget to go ahead without one.")
        if figure > self.budget_usd:
            raise BudgetExceeded(f"The estimate is up to ${figure:.2f} ({estimate.basis}), over the budget of "
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

    def _upload(self, intent_id: str, examples: list[Example], purpose: Literal["train", "validation"],
                display: JobDisplay) -> UploadedFile:
        """Write the examples in the provider's format to a private file (0600, in a 0700 folder under the
        home, never a shared temp folder), upload it, delete it: a copy of training data left behind could
        hold the personal data the scan warned about. A copy left by a killed process goes at the next
        upload."""
        with staging_folder(intent_id[:8]) as folder:
            path = folder / f"{purpose}.jsonl"
            path.touch(mode=0o600)  # private before the first byte is written
            size = write_jsonl(examples, path, self.provider.serialize)
            display.stage(f"uploading {purpose} data to {self.provider_name} ({len(examples)} examples, "
                          f"{size:,} bytes)")
            return self.provider.upload(path, purpose)

    def _submit(self, intent_id: str, train: list[Example], held: list[Example], report: Report,
                display: JobDisplay) -> Job:
        fmt = report.format or "chat"
        try:
            training = self._upload(intent_id, train, "train", display)
            validation = self._upload(intent_id, held, "validation", display) if held else None
            spec = self._spec(training.id, intent_id, validation.id if validation else None, fmt)
            display.stage(f"estimating and submitting to {self.provider_name}")
            assert report.stats is not None
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

    @classmethod
    def from_config(cls, path: str | Path | None = None, **overrides: Any) -> Tuner:
        """A Tuner built from the config file at ``path`` (default: the one ``tuneproxy.config.find_config``
        finds from the current directory; none: from the environment and ``overrides`` alone).

        ``overrides`` win over the ``TUNEPROXY_*`` environment, which wins over the file (docs/config.md): any
        setting (``provider``, ``model``, ``budget_usd``, ``holdout``, ``holdout_seed``, ``stratify``,
        ``provider_options`` merged over the file's ``[providers.<name>]``, portable hyperparameters), and the
        Tuner's own arguments (``poll_interval``, ``api_key``, ``transport``...). The merged
        :class:`~tuneproxy.config.Settings` are kept as ``tuner.settings``: ``tuner.fit(data)`` splits the holdout
        as the file says, and
        ``tuned.evaluate(**tuner.settings.eval.evaluate_arguments())`` evaluates as its ``[eval]`` says
        (``fit`` takes the holdout, its seed and stratification key from them when not given).
        """
        from tuneproxy.config import load_settings, split_overrides

        wanted, arguments = split_overrides(overrides)
        settings = load_settings(path, wanted)
        tuner = cls(**settings.tuner_arguments(), **arguments)
        tuner.settings = settings
        return tuner
