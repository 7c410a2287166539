"""The ``tuneproxy`` command line: typer for parsing, rich for tables and progress.

Exit codes: 0 ok, 1 the input failed a check, 2 usage error, 3 provider or service error. A
:class:`TuneproxyError` is printed as its message, never as a traceback.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, get_args

import typer
from rich.console import Console
from rich.markup import escape

from tuneproxy.errors import ConfigError, TuneproxyError, redact

app = typer.Typer(
    name="tuneproxy",
    help="One interface for LoRA fine-tuning: validate data, estimate cost, fine-tune and follow jobs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: flags read `--json`, not `--json <bool>`
)
console = Console()
err_console = Console(stderr=True)

ProviderOpt = Annotated[str | None, typer.Option("--provider", "-p", help="Check against this service's rules.")]
ModelOpt = Annotated[str | None, typer.Option("--model", "-m", help="Model: picks the tokenizer and context.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]
OfflineOpt = Annotated[bool, typer.Option("--offline", help="Read the ledger only; do not ask the service.")]
PollOpt = Annotated[float | None, typer.Option("--poll-interval", min=0,
                                               help="Seconds between status checks (default: the provider's).")]
OptionOpt = Annotated[list[str] | None, typer.Option(
    "--option", "-o", help="Backend setting KEY=VALUE (repeatable; `tuneproxy providers` lists each backend's), "
                           "e.g. -o quantization=nf4 for local.")]
DataArg = Annotated[Path, typer.Argument(help="Training data, JSONL.")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="Settings file (default: tuneproxy.toml, or "
                                                                 "[tool.tuneproxy] in pyproject.toml, found from "
                                                                 "here upward; docs/config.md).")]
TrainProviderOpt = Annotated[str | None, typer.Option("--provider", "-p",
                                                      help="Where it trains: see `tuneproxy providers`.")]
BaseModelOpt = Annotated[str | None, typer.Option("--model", "-m", help="Base model to fine-tune: a backend id or a "
                                                                       "portable name (`tuneproxy models`); default: "
                                                                       "the backend's own default model.")]


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


@app.command()
def validate(
    file: Annotated[Path, typer.Argument(help="The JSONL dataset to check.")],
    provider: ProviderOpt = None,
    model: ModelOpt = None,
    holdout: Annotated[Path | None, typer.Option(help="Holdout JSONL to check for leakage.")] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs for the billable-token figure.")] = 3,
    as_json: JsonOpt = False,
) -> None:
    """Check a dataset (and its holdout): findings by code, token statistics and a verdict. Exit 1 on errors."""
    from tuneproxy.dataset.validate import validate as run_validation

    rules, service, tokenizer = _rules_for(provider)
    report = run_validation(file, rules=rules, service=service, model=model, holdout=holdout, tokenizer=tokenizer)
    held = (run_validation(holdout, rules=rules, service=service, model=model, check_size=False,
                           tokenizer=tokenizer) if holdout else None)
    if as_json:
        data = report.model_dump(mode="json")
        data["verdict"] = report.verdict()
        if report.stats:
            data["stats"]["billable_tokens"] = report.stats.billable_tokens(epochs)
            data["stats"]["epochs"] = epochs
        if held is not None:
            data["holdout"] = {**held.model_dump(mode="json"), "verdict": held.verdict()}
        _print_json(data)
    else:
        from tuneproxy.render import show_report

        show_report(console, report, epochs)
        if held is not None:
            console.rule(f"holdout {holdout}")
            show_report(console, held, epochs)
    raise typer.Exit(0 if report.ok and (held is None or held.ok) else 1)


def _rules_for(provider: str | None) -> tuple[Any, str | None, str | None]:
    if not provider:
        return None, None, None
    from tuneproxy import registry

    caps = registry.provider_class(provider)(None).capabilities
    return caps.rules, caps.display_name, caps.tokenizer


@app.command("providers")
def providers_command(as_json: JsonOpt = False) -> None:
    """List the providers: the hyperparameters each supports, its options, data rules, and whether it is
    installed."""
    from tuneproxy import registry

    rows = []
    for name in registry.names():
        try:
            cls = registry.provider_class(name)
            caps = cls(None).capabilities
        except TuneproxyError as exc:
            rows.append({"name": name, "available": False, "reason": str(exc)})
            continue
        try:
            registry.check_installed(name)
            available, reason = True, None
        except TuneproxyError as exc:
            available, reason = False, str(exc)
        rows.append({
            "name": name, "available": available, "reason": reason, "display_name": caps.display_name,
            "env_key": caps.env_key,
            "hyperparameters": {k: v.model_dump(exclude_defaults=True) for k, v in caps.parameters.items()},
            "options": cls.Options.describe(),
            "formats": sorted(caps.rules.formats), "min_examples": caps.rules.min_examples,
            "max_examples": caps.rules.max_examples, "sunset": caps.sunset,
            "serving_note": caps.serving_note or None,
        })
    if as_json:
        _print_json(rows)
        return
    from tuneproxy.render import providers_table

    console.print(providers_table(rows))


@app.command("costs")
def costs_command(
    by: Annotated[str, typer.Option("--by", help="Group by provider, job, month (UTC, YYYY-MM) or model.")]
    = "provider",
    since: Annotated[str | None, typer.Option("--since", help="Only what was incurred on or after this date "
                                                              "(YYYY-MM-DD, UTC).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """What was spent, from the ledger (no service is contacted): each job's bill once, deployments by the hour
    (one still running counted up to now, and flagged), the evaluation's priced answers, and each job's estimate
    against its bill. Charges of unknown amount are counted as unknown, never as $0. --json: the schema in
    tuneproxy/spend.py."""
    import datetime as dt

    from tuneproxy.ledger import Ledger
    from tuneproxy.render import estimate_vs_bill_table, spend_notes, spend_table
    from tuneproxy.spend import GROUPINGS, from_ledger

    if by not in GROUPINGS:
        raise typer.BadParameter(f"{by!r} is not one of {', '.join(GROUPINGS)}.", param_hint="--by")
    try:
        start = dt.date.fromisoformat(since) if since is not None else None
    except ValueError:
        raise typer.BadParameter(f"{since!r} is not a date like 2026-11-01.", param_hint="--since") from None
    with _warnings_shown():  # a row the ledger cannot read is named in one line, the rest reported
        report = from_ledger(Ledger(), by=by, since=start)  # type: ignore[arg-type]  # checked above
    if as_json:
        _print_json(report.model_dump(mode="json"))
        return
    if report.empty and start is not None:
        console.print(f"No costs incurred since {start.isoformat()}; `tuneproxy costs` without --since shows "
                      "all of them.", highlight=False)
        return
    if report.empty:
        console.print("No costs recorded yet. They are recorded when a job ends (`tuneproxy fit`, `tuneproxy jobs "
                      "wait ID`), while a deployment runs (`tuneproxy deployments create JOB`) and when an "
                      "evaluation asks a priced model (`tuneproxy eval JOB`).", highlight=False)
        return
    console.print(spend_table(report))
    if report.jobs:
        console.print(estimate_vs_bill_table(report))
    for line in spend_notes(report):
        console.print(line, highlight=False)


@app.command("models")
def models_command(provider: Annotated[str | None, typer.Option("--provider", "-p", help="Only this backend's.")]
                   = None, as_json: JsonOpt = False) -> None:
    """Portable model names and each backend's id for them, with training and serving prices and training
    context (a name works as `-m` everywhere; `[default]` marks what a backend trains when no model is given)."""
    from tuneproxy.models import model_rows

    if provider is not None:
        from tuneproxy import registry

        registry.provider_class(provider)  # an unknown name: the registry's error, listing the valid ones
    rows = model_rows(provider)
    if as_json:
        _print_json([r.model_dump(mode="json") for r in rows])
        return
    if not rows:
        console.print(f"The model table names no model for {provider}: give its own ids with -m.")
        return
    from tuneproxy.render import models_table

    console.print(models_table(rows))


jobs_app = typer.Typer(help="Follow fine-tuning jobs the ledger knows: list, show, events, wait, cancel, resume.",
                       no_args_is_help=True, rich_markup_mode=None)
app.add_typer(jobs_app, name="jobs")
deployments_app = typer.Typer(help="Paid serving deployments of tuned models: create, list, show, delete.",
                              no_args_is_help=True, rich_markup_mode=None)
app.add_typer(deployments_app, name="deployments")


def _holdout_value(value: str | None) -> Any:
    """``--holdout`` is a path, a fraction (0.1) or a count (100)."""
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return Path(value)
    return int(number) if number >= 1 and number.is_integer() else number


@contextmanager
def _warnings_shown() -> Iterator[None]:
    """Show Python warnings (sunset dates, data warnings) as plain lines on stderr, as they happen."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        err_console.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        yield


def _options(pairs: list[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` pairs. Values stay text — the backend's options model converts them to each field's
    type (``5`` to a number where a number is wanted, kept as text for a text field) — except a JSON list,
    object or ``null``."""
    options: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--option")
        options[key] = value
        if value[:1] in "[{" or value == "null":
            try:
                options[key] = json.loads(value)
            except ValueError:
                raise typer.BadParameter(f"{value!r} is not valid JSON", param_hint="--option") from None
            except RecursionError:  # the stdlib parser recurses once per level of nesting
                raise typer.BadParameter(f"the value of {key!r} nests lists or objects too deeply",
                                         param_hint="--option") from None
    return options


def _with_hyperparameters(command: Callable[..., None]) -> Callable[..., None]:
    """Give ``command`` one flag per portable hyperparameter, generated from :class:`Hyperparameters`
    (its names, types and descriptions); the command receives the given ones as ``hyperparameters``."""
    from tuneproxy.contract import Hyperparameters

    names = list(Hyperparameters.model_fields)
    signature = inspect.signature(command, eval_str=True)
    params = [p for p in signature.parameters.values() if p.name != "hyperparameters"]
    for name, field in Hyperparameters.model_fields.items():
        kind = next(t for t in get_args(field.annotation) if t is not type(None))
        option = typer.Option(f"--{name.replace('_', '-')}", help=field.description)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=Annotated[kind | None, option]))

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> None:
        given = {name: kwargs.pop(name) for name in names if kwargs.get(name) is not None}
        for name in names:
            kwargs.pop(name, None)
        command(**kwargs, hyperparameters=given)

    wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    return wrapper


def _settings(config: Path | None, **flags: Any) -> Any:
    """The run's settings: these flags (None: not given) over the TUNEPROXY_* environment over the config file
    (``--config``, else tuneproxy.toml / [tool.tuneproxy] found from here) over the defaults (docs/config.md)."""
    from tuneproxy.config import load_settings

    return load_settings(config, flags)


def _tuner(settings: Any, **arguments: Any) -> Any:
    """The Tuner of ``settings`` (with the CLI's own ``arguments``), saying which model it chose when none was
    given."""
    from tuneproxy.tuner import Tuner

    tuner = Tuner(**settings.tuner_arguments(), **arguments)
    if tuner.model_choice.default:
        err_console.print(f"{tuner.provider_name}: {tuner.model_choice.said}.", highlight=False, soft_wrap=True)
    return tuner


@app.command()
@_with_hyperparameters
def estimate(data: DataArg, provider: TrainProviderOpt = None, model: BaseModelOpt = None, option: OptionOpt = None,
             all_: Annotated[bool, typer.Option("--all", help="Every backend that offers the model (a portable name; "
                                                              "none: each backend's default), side by side, "
                                                              "cheapest first.")] = False,
             config: ConfigOpt = None, as_json: JsonOpt = False, *, hyperparameters: dict[str, Any]) -> None:
    """What fine-tuning on DATA would cost, before anything is uploaded or paid (takes the same
    hyperparameters as `fit`: a price can depend on them). With --all: the cost desk, one row per backend
    (-p limits it to one; -o sets that backend's options; the config file's [providers.*] set each one's)."""
    if all_:
        from tuneproxy.config import desk_settings, find_config, load_config
        from tuneproxy.tuner import Tuner

        with _warnings_shown():
            found = config or find_config()
            wanted, hyper, options = desk_settings(
                load_config(found) if found else None, os.environ,
                {"model": model, **hyperparameters, "provider_options": {provider: _options(option)} if provider
                 else None})
            desk = Tuner.estimate_all(data, wanted, providers=[provider] if provider else None,
                                      provider_options=options, **hyper)
        if as_json:
            _print_json(desk.model_dump(mode="json"))
            return
        from tuneproxy.render import desk_table

        console.print(desk_table(desk))
        epochs = sorted({r.epochs for r in desk.rows if r.epochs})
        console.print(f"The data was read and its tokens counted once ({desk.total_tokens:,} per epoch), "
                      f"{', '.join(map(str, epochs))} epoch(s); each row says how its backend counts them. Each "
                      "backend's basis and price dates: --json.", highlight=False, soft_wrap=True)
        if desk.stale:
            console.print("[yellow]warning:[/] a price used is more than 90 days old: check the providers' pricing "
                          "pages.", highlight=False)
        return
    with _warnings_shown():
        settings = _settings(config, provider=provider, model=model, provider_options=_options(option) or None,
                             **hyperparameters)
        result = _tuner(settings, show_progress=False).estimate(data)
    if as_json:
        _print_json(result.model_dump(mode="json"))
        return
    from tuneproxy.render import estimate_line

    console.print(estimate_line(result), highlight=False, soft_wrap=True)


def _can_ask() -> bool:
    """Whether a question can be answered: a terminal on stdin and on stderr (where the question goes)."""
    return sys.stdin.isatty() and err_console.is_terminal


def _confirmer(yes: bool, auto_approve: float | None) -> Callable[[Any], bool] | None:
    """How `fit` confirms its estimate before paying: not at all with --yes; without asking when the estimate's
    top is at most ``auto_approve`` USD, or when there is no terminal to ask on (it never hangs: the estimate is
    printed and the run goes on); otherwise a yes/no question on the terminal, no by default."""
    if yes:
        return None

    def confirm(estimate: Any) -> bool:
        from tuneproxy.render import estimate_line

        err_console.print(f"Estimate: {estimate_line(estimate)}", highlight=False, soft_wrap=True)
        top = estimate.usd_high if estimate.usd_high is not None else estimate.usd
        if top is not None and auto_approve is not None and top <= auto_approve:
            return True
        if not _can_ask():
            err_console.print("(no terminal to confirm on: going ahead; --yes skips this line)", highlight=False)
            return True
        return typer.confirm("Upload the data and pay for this job?", default=False, err=True)

    return confirm


@app.command()
@_with_hyperparameters
def fit(
    data: DataArg,
    provider: TrainProviderOpt = None,
    model: BaseModelOpt = None,
    holdout: Annotated[str | None, typer.Option(help="Validation JSONL, or a fraction/count to hold out.")] = None,
    stratify: Annotated[str | None, typer.Option(help="Metadata key to stratify the holdout by.")] = None,
    budget: Annotated[float | None, typer.Option(help="Refuse if the estimate is over this many USD.")] = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Submit and return the job id at once.")] = False,
    new: Annotated[bool, typer.Option("--new", help="Submit a new job even if this same request has one "
                                                    "running (by default fit follows that one).")] = False,
    reuse: Annotated[bool, typer.Option("--reuse", help="Return this same request's succeeded job instead of "
                                                        "training again.")] = False,
    poll_interval: PollOpt = None,
    option: OptionOpt = None,
    holdout_seed: Annotated[int | None, typer.Option(help="Seed of the holdout split (default 0).")] = None,
    config: ConfigOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask to confirm the estimate before paying.")] = False,
    auto_approve: Annotated[float | None, typer.Option(help="Go ahead without asking when the estimate is at most "
                                                            "this many USD.")] = None,
    as_json: JsonOpt = False,
    *,
    hyperparameters: dict[str, Any],
) -> None:
    """Validate, estimate, upload and submit a fine-tuning job, then follow it to the end."""
    from tuneproxy.jobs import Job

    with _warnings_shown():
        settings = _settings(config, provider=provider, model=model, budget_usd=budget,
                             holdout=_holdout_value(holdout), holdout_seed=holdout_seed, stratify=stratify,
                             provider_options=_options(option) or None, **hyperparameters)
        tuner = _tuner(settings, poll_interval=poll_interval, show_progress=not as_json,
                       confirm=_confirmer(yes, auto_approve))
        with _still_running(lambda: tuner.job):
            result = tuner.fit(data, **settings.fit_arguments(), wait=not no_wait, resubmit=new, reuse=reuse)
    record = result.record
    if as_json:
        payload = record.model_dump(mode="json")
        if not isinstance(result, Job):
            payload["costs"] = [c.model_dump(mode="json") for c in result.costs]
            payload["serving_note"] = result.serving_note or None
        _print_json(payload)
        return
    if isinstance(result, Job):
        console.print(f"Submitted job [bold]{record.job_id}[/] on {record.provider} ({record.status.value}). "
                      f"Follow it with `tuneproxy jobs wait {record.job_id}`.", highlight=False)
        return
    billed = next((c.usd for c in reversed(result.costs) if c.kind == "billed"), None)
    shown = f"${billed:.4f}" if billed is not None else "not known"
    console.print(f"[bold green]Done:[/] {result.model} (job {record.job_id}, billed {shown})", highlight=False)
    if result.serving_note:
        console.print(f"[yellow]Note:[/] {result.serving_note}", highlight=False, soft_wrap=True)


@contextmanager
def _still_running(job: Callable[[], Any]) -> Iterator[None]:
    """Ctrl-C while following a job: the job keeps running at the service; say how to follow or stop it."""
    try:
        yield
    except KeyboardInterrupt:
        current = job()
        if current is None:
            raise
        err_console.print(f"Interrupted. Job {current.id} keeps running on {current.record.provider}: follow it with "
                          f"`tuneproxy jobs wait {current.id}`, stop it with `tuneproxy jobs cancel {current.id}`.",
                          highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None


def _attach(job_id: str, poll_interval: float | None = None) -> Any:
    from tuneproxy.jobs import Job

    return Job.attach(job_id, poll_interval=poll_interval)


def _load(job_id: str, offline: bool) -> tuple[Any, Any]:
    """(the ledger, the job handle or None offline), refreshed from the service unless ``offline``."""
    from tuneproxy.ledger import Ledger

    if offline:
        return Ledger(), None
    job = _attach(job_id)
    job.refresh()
    return job.ledger, job


@jobs_app.command("list")
def jobs_list(provider: Annotated[str | None, typer.Option("--provider", "-p", help="Only this provider's jobs.")]
              = None, limit: Annotated[int, typer.Option(min=1, help="Show at most this many.")] = 50,
              as_json: JsonOpt = False) -> None:
    """Jobs in the ledger, newest first (no service is contacted)."""
    from tuneproxy.ledger import Ledger
    from tuneproxy.render import job_table

    with _warnings_shown():  # a row the ledger cannot read is named, the others listed
        records = Ledger().jobs(provider, limit)
    if as_json:
        _print_json([r.model_dump(mode="json") for r in records])
    elif records:
        console.print(job_table(records))
    else:
        console.print("No jobs yet. Start one with `tuneproxy fit DATA --provider P --model M`.")


@jobs_app.command("show")
def jobs_show(job_id: str, offline: OfflineOpt = False, as_json: JsonOpt = False) -> None:
    """One job's state (refreshed from the service unless --offline) and its costs."""
    from tuneproxy.render import cost_lines, job_table

    ledger, job = _load(job_id, offline)
    record = job.record if job else ledger.job(job_id)
    with _warnings_shown():
        costs = ledger.job_costs(record)
    if as_json:
        _print_json({**record.model_dump(mode="json"), "costs": [c.model_dump(mode="json") for c in costs]})
        return
    console.print(job_table([record]))
    if record.error:
        console.print(f"[red]error from {record.provider}:[/] {escape(record.error)}", highlight=False)
    for line in cost_lines(costs):
        console.print(line, highlight=False)


@jobs_app.command("events")
def jobs_events(job_id: str, offline: OfflineOpt = False, as_json: JsonOpt = False) -> None:
    """A job's log lines and training metrics (new ones fetched from the service unless --offline)."""
    from tuneproxy.render import events_table

    ledger, job = _load(job_id, offline)
    if job:
        job.events()
    record = job.record if job else ledger.job(job_id)
    with _warnings_shown():
        events = ledger.events(record.provider, record.job_id)
    if as_json:
        _print_json([e.model_dump(mode="json") for e in events])
        return
    console.print(events_table(job_id, events))


@jobs_app.command("wait")
def jobs_wait(job_id: str, poll_interval: PollOpt = None, as_json: JsonOpt = False) -> None:
    """Follow a job until it ends, with a live display. Exit 3 if it failed or was cancelled."""
    from tuneproxy.contract import JobStatus
    from tuneproxy.display import JobDisplay
    from tuneproxy.render import job_table

    job = _attach(job_id, poll_interval)
    with _still_running(lambda: job), JobDisplay(enabled=not as_json) as display:
        record = job.wait(on_update=display)
    if as_json:
        _print_json(record.model_dump(mode="json"))
    else:
        console.print(job_table([record]))
    if record.status is not JobStatus.SUCCEEDED:
        why = record.error or f"it ended as {record.raw_status}"
        err_console.print(f"[red]Job {record.job_id} {record.status.value}:[/] {escape(why)}", highlight=False,
                          soft_wrap=True)
        raise typer.Exit(3)


@jobs_app.command("cancel")
def jobs_cancel(job_id: str, as_json: JsonOpt = False) -> None:
    """Ask the service to stop a job (it may take a while to stop: `tuneproxy jobs wait` follows it)."""
    record = _attach(job_id).cancel()
    if as_json:
        _print_json(record.model_dump(mode="json"))
    else:
        console.print(f"Cancel requested: {record.job_id} is {record.status.value} ({record.raw_status}).",
                      highlight=False)


@jobs_app.command("resume")
def jobs_resume(job_id: str, as_json: JsonOpt = False) -> None:
    """Restart a stopped job from its latest checkpoint (backends that can: the local one)."""
    record = _attach(job_id).resume()
    if as_json:
        _print_json(record.model_dump(mode="json"))
    else:
        console.print(f"Resumed: {record.job_id} is {record.status.value}.", highlight=False)


@deployments_app.command("create")
def deployments_create(job_id: str, hardware: Annotated[str | None, typer.Option(
        help="Hardware to serve on (the service's name for it; default: its own choice).")] = None,
        wait: Annotated[bool, typer.Option("--wait", help="Follow the deployment until it is ready (exit 3 if it "
                                                          "fails instead).")] = False,
        poll_interval: PollOpt = None, as_json: JsonOpt = False) -> None:
    """Start a PAID dedicated deployment of a succeeded job's tuned model (billed by the hour until
    `tuneproxy deployments delete`). With --wait, follow it until it is ready: each state is saved in the
    ledger, shown as a live status on a terminal or a plain line per change otherwise (on stderr)."""
    from contextlib import nullcontext

    tuned = _attach(job_id).result()
    deployment = tuned.deploy(hardware=hardware)
    name = deployment.deployment_id
    if wait:
        live = err_console.is_interactive
        status = err_console.status(f"Deployment {name}: {deployment.state}")
        shown: list[str] = []

        def show(current: Any) -> None:
            line = f"Deployment {name}: {current.state} ({current.raw_state})"
            if live:
                status.update(line)
            elif line not in shown[-1:]:
                err_console.file.write(line + "\n")
                err_console.file.flush()
            shown.append(line)

        try:
            with status if live else nullcontext():
                deployment = tuned.wait_until_ready(deployment, poll_interval=poll_interval, on_change=show)
        except KeyboardInterrupt:
            err_console.print(f"Interrupted. Deployment {name} goes on starting and bills once it runs: check it "
                              f"with `tuneproxy deployments show {name}`, delete it with `tuneproxy deployments "
                              f"delete {name}`.", highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None
    if as_json:
        _print_json(deployment.model_dump(mode="json"))
        return
    price = f"${deployment.usd_per_hour:.2f}/hour" if deployment.usd_per_hour is not None else "price unknown"
    console.print(f"Deployment [bold]{name}[/] of {deployment.model} is {deployment.state} "
                  f"({price}). Stop it with `tuneproxy deployments delete {name}`.",
                  highlight=False)


@deployments_app.command("list")
def deployments_list(all_: Annotated[bool, typer.Option("--all", help="Include deleted ones.")] = False,
                     as_json: JsonOpt = False) -> None:
    """Deployments the ledger knows (active ones unless --all), newest first; no service is contacted."""
    from tuneproxy.ledger import Ledger
    from tuneproxy.render import deployment_table

    with _warnings_shown():
        rows = Ledger().deployments(active_only=not all_)
    if as_json:
        _print_json([d.model_dump(mode="json") for d in rows])
    elif rows:
        console.print(deployment_table(rows))
    else:
        console.print("No active deployments: nothing is billing by the hour.")


def _deployment_provider(deployment_id: str) -> tuple[Any, Any, Any]:
    """(ledger, deployment, the provider that serves it). The provider is built with its default options
    and the environment's key: a deployment id carries what the service needs to find it."""
    from tuneproxy import registry
    from tuneproxy.contract import Deployable
    from tuneproxy.ledger import Ledger

    ledger = Ledger()
    deployment = ledger.deployment(deployment_id)
    provider = registry.create(deployment.provider)
    if not isinstance(provider, Deployable):
        raise ConfigError(f"{deployment.provider} has no deployments to manage.")
    return ledger, deployment, provider


@deployments_app.command("show")
def deployments_show(deployment_id: str, as_json: JsonOpt = False) -> None:
    """One deployment's state, asked of the service (and saved)."""
    from tuneproxy.render import deployment_table

    ledger, deployment, provider = _deployment_provider(deployment_id)
    current = _current(ledger, deployment, lambda: provider.deployment(deployment.deployment_id))
    if as_json:
        _print_json(current.model_dump(mode="json"))
    else:
        console.print(deployment_table([current]))


@deployments_app.command("delete")
def deployments_delete(deployment_id: str, as_json: JsonOpt = False) -> None:
    """Stop and delete a deployment, so it stops billing."""
    ledger, deployment, provider = _deployment_provider(deployment_id)
    stopped = _current(ledger, deployment, lambda: provider.undeploy(deployment.deployment_id))
    if as_json:
        _print_json(stopped.model_dump(mode="json"))
    elif stopped.state == "stopped":
        console.print(f"Deleted deployment {stopped.deployment_id}; it no longer bills.", highlight=False)
    else:
        console.print(f"Deployment {stopped.deployment_id} is {stopped.state} ({stopped.raw_state}), not gone yet: "
                      f"run `tuneproxy deployments delete {stopped.deployment_id}` again in a minute.",
                      highlight=False)
        raise typer.Exit(3)


def _current(ledger: Any, deployment: Any, ask: Callable[[], Any]) -> Any:
    """What the service says of a deployment, saved; one it no longer has is saved as stopped."""
    from tuneproxy.errors import NotFound

    try:
        current = ask()
    except NotFound:
        current = deployment.model_copy(update={"state": "stopped", "raw_state": "not found at the service"})
    ledger.save_deployment(current)
    return current


@app.command("eval")
def eval_(
    job_id: Annotated[str | None, typer.Argument(help="The job whose tuned model to evaluate (id or its start).")]
    = None,
    data: Annotated[Path | None, typer.Option("--data", help="Evaluation JSONL (default: what the job's fit held "
                                                             "out; examples it trained on are refused).")] = None,
    baseline: Annotated[list[str] | None, typer.Option(
        "--baseline", "-b", help="Compare with: base, few-shot:K, another job id, or URL#MODEL for an "
                                 "OpenAI-compatible server (repeatable; default: base).")] = None,
    scorer: Annotated[list[str] | None, typer.Option(
        "--scorer", "-s", help="exact, normalized, json, json_fields, label:FIELD, token_f1, rouge_l, regex:P, "
                               "contains:T, json_schema:FILE, python:MODULE:FUNCTION, judge:RUBRIC (repeatable; "
                               "default: chosen from the references; docs/scorers.md).")] = None,
    slice_by: Annotated[str | None, typer.Option("--slice", help="Metadata key to compare per value of.")] = None,
    endpoint: Annotated[str | None, typer.Option("--endpoint", help="Evaluate an OpenAI-compatible server's "
                                                                    "model instead of a job (with --model).")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="The model name at --endpoint.")] = None,
    judge: Annotated[str | None, typer.Option("--judge", help="URL#MODEL of the LLM judge for judge: scorers "
                                                              "and --pairwise.")] = None,
    pairwise: Annotated[str | None, typer.Option(
        "--pairwise", help="Criteria for the --judge to pick the better of the tuned and each baseline's answer "
                           "by (both orders asked); the report counts wins, ties and losses per slice.")] = None,
    deployment: Annotated[str | None, typer.Option("--deployment", help="Ask the tuned model on this paid "
                                                                        "deployment (`deployments list`).")] = None,
    report: Annotated[Path | None, typer.Option("--report", help="Write the HTML report here.")] = None,
    markdown: Annotated[Path | None, typer.Option("--markdown", help="Write the Markdown report here.")] = None,
    concurrency: Annotated[int | None, typer.Option(min=1, help="Requests in flight per system (default 8).")]
    = None,
    max_tokens: Annotated[int | None, typer.Option(min=1, help="Most tokens per answer (default 256).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the bootstrap (and of generation, where honoured; "
                                                  "default 0).")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Evaluate a tuned model against its base (and other baselines) on held-out data, per slice. Options not
    given come from the config file's [eval] (docs/config.md)."""
    from tuneproxy.config import eval_settings, find_config, load_config
    from tuneproxy.contract import GenerationParams
    from tuneproxy.evaluation.evaluate import Evaluation
    from tuneproxy.evaluation.plan import baseline_systems, candidate_system, holdout_items, url_system
    from tuneproxy.evaluation.runner import Runner
    from tuneproxy.evaluation.scorers import PairwiseJudge, default_scorers, scorer_from_spec
    from tuneproxy.ledger import Ledger

    found = config or find_config()
    settings = eval_settings(load_config(found) if found else None, {
        "baselines": baseline, "scorers": scorer, "slice_by": slice_by, "concurrency": concurrency,
        "max_tokens": max_tokens, "seed": seed, "judge": judge, "pairwise": pairwise})
    baseline, scorer, slice_by = settings.baselines, settings.scorers, settings.slice_by
    judge, pairwise = settings.judge, settings.pairwise
    concurrency = settings.concurrency or 8
    max_tokens = settings.max_tokens or 256
    seed = settings.seed if settings.seed is not None else 0
    if pairwise is not None and not judge:
        raise typer.BadParameter("needs --judge URL#MODEL, the LLM that compares the answers.",
                                 param_hint="--pairwise")
    if (job_id is None) == (endpoint is None):
        raise ConfigError("Name what to evaluate: a job id, or --endpoint URL with --model M.")
    if endpoint is not None and (model is None or data is None):
        raise ConfigError("--endpoint needs --model (the model's name there) and --data (what to ask).")
    with _warnings_shown():
        ledger = Ledger()
        tuned = _attach(job_id).result() if job_id else None
        if tuned is not None:
            items = holdout_items(tuned, data, slice_by)
            candidate = candidate_system(tuned, ledger.deployment(deployment) if deployment else None)
        else:
            from tuneproxy.dataset.validate import load_examples
            from tuneproxy.evaluation.items import to_items

            assert endpoint is not None and model is not None
            items, candidate = to_items(load_examples(data), slice_by), url_system(endpoint, model)
        judge_endpoint = None
        if judge:
            url, _, judge_model = judge.partition("#")
            judge_endpoint = url_system(url, judge_model).endpoint
        scorers = ([scorer_from_spec(spec, judge=judge_endpoint) for spec in scorer] if scorer
                   else default_scorers(items))
        evaluation = Evaluation(
            candidate=candidate, baselines=baseline_systems(tuned, baseline or (["base"] if tuned else []), slice_by),
            items=items, scorers=scorers,
            runner=Runner(ledger, concurrency=concurrency, show_progress=not as_json),
            slice_by=slice_by, params=GenerationParams(max_tokens=max_tokens, seed=seed),
            job_id=tuned.job_id if tuned else None,
            events=ledger.events(tuned.provider, tuned.job_id) if tuned else (), seed=seed,
            pairwise=PairwiseJudge(judge_endpoint, pairwise) if pairwise is not None and judge_endpoint else None)
        result = evaluation.run()
    if report is not None:
        report.write_text(result.to_html(), encoding="utf-8")
    if markdown is not None:
        markdown.write_text(result.to_markdown(), encoding="utf-8")
    if as_json:
        sys.stdout.write(result.model_dump_json(indent=2) + "\n")
        return
    from tuneproxy.evaluation import report as rendering

    rendering.terminal(result, console)
    for path in (report, markdown):
        if path is not None:
            console.print(f"Report written to {path}", highlight=False)


@app.command("serve")
def serve_command(
    job_ids: Annotated[list[str] | None, typer.Argument(
        metavar="[JOB_ID]...", show_default=False,
        help="Succeeded local jobs whose adapters to serve (default: every one the ledger knows, from --base if "
             "given).")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    base: Annotated[str | None, typer.Option(help="The base model, served too (default: the jobs' own).")] = None,
    engine: Annotated[str, typer.Option(help="auto (vLLM when it is installed and a CUDA GPU is present, else "
                                             "builtin), builtin or vllm.")] = "auto",
) -> None:
    """Serve local tuned adapters and their base over OpenAI's chat API (GET /v1/models, POST
    /v1/chat/completions, streamed token by token too), batching concurrent requests. Each adapter is named
    local:<job-id>. With --engine vllm (or auto, on a CUDA GPU with vLLM installed) it launches vLLM's OpenAI
    server on the same base and adapters (--enable-lora), with the same names, host and port, and waits for it."""
    from tuneproxy import registry

    code = registry.server()(job_ids or [], host=host, port=port, base=base, engine=engine, console=console)
    if code:
        raise typer.Exit(code)


@app.command("export")
def export_command(
    job_id: Annotated[str, typer.Argument(help="A succeeded local job (id or unique prefix).")],
    format_: Annotated[str, typer.Option("--format", help="adapter (PEFT folder for vLLM/peft), merged (the full "
                                                          "model, safetensors) or gguf (llama.cpp/Ollama, F16; "
                                                          "for a job on a llama .gguf base).")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write (must be empty unless --force).")],
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty --out folder.")] = False,
) -> None:
    """Export a succeeded local job's tuned model: its PEFT adapter, the base with the adapter merged in, or
    GGUF (the merged model at F16 in the base's own GGUF layout, for a job whose base was a llama .gguf file
    such as the bundled SmolLM2; for any other base it says how to convert the merged folder with llama.cpp)."""
    from tuneproxy import registry

    registry.exporter()(job_id, format_, out, force=force, console=console)


@app.command("init")
def init_command(
    path: Annotated[Path, typer.Argument(help="File to write (a folder gets tuneproxy.toml in it).")]
    = Path("tuneproxy.toml"),
    provider: Annotated[str, typer.Option("--provider", "-p", help="The provider the file starts with.")] = "openai",
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented starter config file (docs/config.md describes every key)."""
    from tuneproxy.config import write_starter

    written = write_starter(path, provider, force=force)
    console.print(f"Wrote {written} for {provider} (docs/config.md describes every key).", highlight=False,
                  soft_wrap=True)


def main() -> None:
    """Entry point: run the app, turning tuneproxy errors into messages and exit codes."""
    try:
        code = app(standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("Interrupted; anything already recorded is kept in the ledger.")
        sys.exit(130)
    except TuneproxyError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # a usage error or a bug: never a traceback unless asked for
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):  # typer's (vendored) click usage errors
            exc.show()
            sys.exit(exc.exit_code)
        if os.environ.get("TUNEPROXY_DEBUG"):
            raise
        err_console.print(f"[bold red]internal error:[/] {type(exc).__name__}: {escape(redact(str(exc)))}. "
                          "Set TUNEPROXY_DEBUG=1 for the traceback and please report it.",
                          highlight=False, soft_wrap=True)
        sys.exit(3)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
