"""The ``tuneproxy`` command line: typer for parsing, rich for tables and progress.

Exit codes: 0 ok, 1 the input failed a check, 2 usage error, 3 provider or service error. A
:class:`TuneproxyError` is printed as its message, never as a traceback.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tuneproxy.errors import TuneproxyError, redact

app = typer.Typer(
    name="tuneproxy",
    help="One interface for LoRA fine-tuning: validate data, estimate cost, fine-tune and follow jobs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

ProviderOpt = Annotated[str | None, typer.Option("--provider", "-p", help="Check against this service's rules.")]
ModelOpt = Annotated[str | None, typer.Option("--model", "-m", help="Model: picks the tokenizer and context.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]


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

    rules, service = _rules_for(provider)
    report = run_validation(file, rules=rules, service=service, model=model, holdout=holdout)
    held = run_validation(holdout, rules=rules, service=service, model=model, check_size=False) if holdout else None
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


def _rules_for(provider: str | None):
    if not provider:
        return None, None
    from tuneproxy import registry

    caps = registry.provider_class(provider).capabilities
    return caps.rules, caps.display_name


@app.command("providers")
def providers_command(as_json: JsonOpt = False) -> None:
    """List the providers, the hyperparameters each supports, and their data rules."""
    from tuneproxy import registry

    rows = []
    for name in registry.names():
        try:
            caps = registry.provider_class(name).capabilities
        except TuneproxyError as exc:
            rows.append({"name": name, "available": False, "reason": str(exc)})
            continue
        rows.append({
            "name": name, "available": True, "display_name": caps.display_name, "env_key": caps.env_key,
            "hyperparameters": {k: v.model_dump(exclude_defaults=True) for k, v in caps.parameters.items()},
            "formats": sorted(caps.rules.formats), "min_examples": caps.rules.min_examples,
            "max_examples": caps.rules.max_examples, "sunset": caps.sunset,
        })
    if as_json:
        _print_json(rows)
        return
    table = Table(title="Providers")
    for col in ("name", "key variable", "formats", "hyperparameters", "sunset"):
        table.add_column(col)
    for row in rows:
        if not row["available"]:
            table.add_row(row["name"], "", "", f"[red]{escape(row['reason'])}[/]", "")
            continue
        table.add_row(row["name"], row["env_key"] or "-", ", ".join(row["formats"]),
                      ", ".join(row["hyperparameters"]), str(row["sunset"] or ""))
    console.print(table)



jobs_app = typer.Typer(help="Follow fine-tuning jobs the ledger knows: list, show, events, wait, cancel.",
                       no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")

OfflineOpt = Annotated[bool, typer.Option("--offline", help="Read the ledger only; do not ask the service.")]
PollOpt = Annotated[float | None, typer.Option("--poll-interval", min=0,
                                               help="Seconds between status checks (default: the provider's).")]


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
def _warnings_shown():
    """Show Python warnings (sunset dates, data warnings) as plain lines on stderr, as they happen."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        err_console.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        yield


OptionOpt = Annotated[list[str] | None, typer.Option(
    "--option", "-o", help="Backend setting KEY=VALUE (repeatable), e.g. -o quantization=nf4 for local.")]


def _options(pairs: list[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; a value that parses as JSON (numbers, true, lists) is taken as such."""
    options: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--option")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


@app.command()
def estimate(
    data: Annotated[Path, typer.Argument(help="Training data, JSONL.")],
    provider: Annotated[str, typer.Option("--provider", "-p", help="Where it would train.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Base model.")],
    epochs: Annotated[int | None, typer.Option(min=1, help="Passes over the data.")] = None,
    option: OptionOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """What fine-tuning on DATA would cost, before anything is uploaded or paid."""
    from tuneproxy.tuner import Tuner

    params = {"epochs": epochs} if epochs is not None else {}
    with _warnings_shown():
        tuner = Tuner(provider, model, show_progress=False, provider_options=_options(option), **params)
        result = tuner.estimate(data)
    if as_json:
        _print_json(result.model_dump(mode="json"))
        return
    usd = "unknown" if result.usd is None else f"${result.usd:.4f}"
    console.print(f"[bold]{usd}[/] for {result.billable_tokens or 0:,} billable tokens on {provider} "
                  f"({'from the service' if result.authoritative else 'estimated locally'}): "
                  f"{escape(result.basis)}", highlight=False, soft_wrap=True)


@app.command()
def fit(
    data: Annotated[Path, typer.Argument(help="Training data, JSONL.")],
    provider: Annotated[str, typer.Option("--provider", "-p", help="Where to train: see `tuneproxy providers`.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Base model to fine-tune.")],
    epochs: Annotated[int | None, typer.Option(help="Passes over the data.")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    learning_rate_multiplier: Annotated[float | None, typer.Option(help="OpenAI's LR multiplier.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Examples per step.")] = None,
    lora_rank: Annotated[int | None, typer.Option(help="LoRA rank.")] = None,
    lora_alpha: Annotated[float | None, typer.Option(help="LoRA alpha.")] = None,
    lora_dropout: Annotated[float | None, typer.Option(help="LoRA dropout.")] = None,
    max_seq_length: Annotated[int | None, typer.Option(help="Longest sequence in tokens.")] = None,
    warmup_ratio: Annotated[float | None, typer.Option(help="Warm-up share of steps.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    suffix: Annotated[str | None, typer.Option(help="Tag for the tuned model's name.")] = None,
    holdout: Annotated[str | None, typer.Option(help="Validation JSONL, or a fraction/count to hold out.")] = None,
    stratify: Annotated[str | None, typer.Option(help="Metadata key to stratify the holdout by.")] = None,
    budget: Annotated[float | None, typer.Option(help="Refuse if the estimate is over this many USD.")] = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Submit and return the job id at once.")] = False,
    poll_interval: PollOpt = None,
    option: OptionOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate, estimate, upload and submit a fine-tuning job, then follow it to the end."""
    from tuneproxy.jobs import Job
    from tuneproxy.tuner import Tuner

    params = {"epochs": epochs, "learning_rate": learning_rate, "learning_rate_multiplier": learning_rate_multiplier,
              "batch_size": batch_size, "lora_rank": lora_rank, "lora_alpha": lora_alpha,
              "lora_dropout": lora_dropout, "max_seq_length": max_seq_length, "warmup_ratio": warmup_ratio,
              "seed": seed, "suffix": suffix}
    with _warnings_shown():
        tuner = Tuner(provider, model, budget_usd=budget, poll_interval=poll_interval, show_progress=not as_json,
                      provider_options=_options(option), **{k: v for k, v in params.items() if v is not None})
        result = tuner.fit(data, _holdout_value(holdout), wait=not no_wait, stratify=stratify)
    record = result.record
    if as_json:
        payload = record.model_dump(mode="json")
        if not isinstance(result, Job):
            payload["costs"] = result.costs
        _print_json(payload)
        return
    if isinstance(result, Job):
        console.print(f"Submitted job [bold]{record.job_id}[/] on {record.provider} ({record.status.value}). "
                      f"Follow it with `tuneproxy jobs wait {record.job_id}`.", highlight=False)
        return
    billed = f"${record.billed_usd:.4f}" if record.billed_usd is not None else "not reported"
    console.print(f"[bold green]Done:[/] {result.model} (job {record.job_id}, billed {billed})", highlight=False)


def _job_table(records: list) -> Table:
    table = Table(title="Jobs")
    for col in ("job", "provider", "base model", "status", "tuned model", "billed USD", "created"):
        table.add_column(col, overflow="fold")
    for r in records:
        style = {"succeeded": "green", "failed": "red", "cancelled": "yellow"}.get(r.status.value, "")
        table.add_row(r.job_id, r.provider, r.model, f"[{style}]{r.status.value}[/]" if style else r.status.value,
                      r.fine_tuned_model or "", "" if r.billed_usd is None else f"{r.billed_usd:.4f}",
                      r.created_at.isoformat(timespec="seconds") if r.created_at else "")
    return table


def _attach(job_id: str, poll_interval: float | None = None):
    from tuneproxy.jobs import Job

    return Job.attach(job_id, poll_interval=poll_interval)


@jobs_app.command("list")
def jobs_list(provider: ProviderOpt = None, limit: Annotated[int, typer.Option(min=1)] = 50,
              as_json: JsonOpt = False) -> None:
    """Jobs in the ledger, newest first (no service is contacted)."""
    from tuneproxy.ledger import Ledger

    records = Ledger().jobs(provider, limit)
    if as_json:
        _print_json([r.model_dump(mode="json") for r in records])
    elif records:
        console.print(_job_table(records))
    else:
        console.print("No jobs yet. Start one with `tuneproxy fit DATA --provider P --model M`.")


@jobs_app.command("show")
def jobs_show(job_id: str, offline: OfflineOpt = False, as_json: JsonOpt = False) -> None:
    """One job's state (refreshed from the service unless --offline) and its costs."""
    from tuneproxy.ledger import Ledger

    if offline:
        ledger = Ledger()
        record = ledger.job(job_id)
    else:
        job = _attach(job_id)
        ledger, record = job.ledger, job.refresh()
    costs = ledger.job_costs(record)
    if as_json:
        _print_json({**record.model_dump(mode="json"), "costs": costs})
        return
    console.print(_job_table([record]))
    if record.error:
        console.print(f"[red]error from {record.provider}:[/] {escape(record.error)}", highlight=False)
    for c in costs:
        usd = "unknown" if c["usd"] is None else f"${c['usd']:.4f}"
        console.print(f"{c['kind']}: {usd} — {escape(c['basis'])}", highlight=False)


@jobs_app.command("events")
def jobs_events(job_id: str, offline: OfflineOpt = False, as_json: JsonOpt = False) -> None:
    """A job's log lines and training metrics (new ones fetched from the service unless --offline)."""
    from tuneproxy.ledger import Ledger

    if offline:
        ledger = Ledger()
        record = ledger.job(job_id)
        events = ledger.events(record.provider, record.job_id)
    else:
        job = _attach(job_id)
        job.events()
        events = job.history()
    if as_json:
        _print_json([e.model_dump(mode="json") for e in events])
        return
    table = Table(title=f"Events of {job_id}")
    for col in ("time", "level", "step", "train loss", "valid loss", "message"):
        table.add_column(col, overflow="fold")
    for e in events:
        table.add_row(e.time.isoformat(timespec="seconds"), e.level, "" if e.step is None else str(e.step),
                      "" if e.train_loss is None else f"{e.train_loss:.4f}",
                      "" if e.valid_loss is None else f"{e.valid_loss:.4f}", escape(e.message))
    console.print(table)


@jobs_app.command("wait")
def jobs_wait(job_id: str, poll_interval: PollOpt = None, as_json: JsonOpt = False) -> None:
    """Follow a job until it ends, with a live display. Exit 3 if it failed or was cancelled."""
    from tuneproxy.display import JobDisplay

    job = _attach(job_id, poll_interval)
    with JobDisplay(enabled=not as_json) as display:
        record = job.wait(on_update=display)
    if as_json:
        _print_json(record.model_dump(mode="json"))
    else:
        console.print(_job_table([record]))
    if record.status.value != "succeeded":
        raise typer.Exit(3)


@jobs_app.command("cancel")
def jobs_cancel(job_id: str, as_json: JsonOpt = False) -> None:
    """Ask the service to stop a job."""
    record = _attach(job_id).cancel()
    if as_json:
        _print_json(record.model_dump(mode="json"))
    else:
        console.print(f"Cancel requested: {record.job_id} is {record.status.value} ({record.raw_status}).",
                      highlight=False)


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
