"""The ``tuneproxy`` command line: typer for parsing, rich for tables and progress.

Exit codes: 0 ok, 1 the input failed a check, 2 usage error, 3 provider or service error. A
:class:`TuneproxyError` is printed as its message, never as a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tuneproxy.errors import TuneproxyError

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
    """Check a dataset: findings by code, token statistics and a verdict. Exit 1 when it has errors."""
    from tuneproxy.dataset.validate import validate as run_validation

    rules, service = _rules_for(provider)
    report = run_validation(file, rules=rules, service=service, model=model, holdout=holdout)
    if as_json:
        data = report.model_dump(mode="json")
        data["verdict"] = report.verdict()
        if report.stats:
            data["stats"]["billable_tokens"] = report.stats.billable_tokens(epochs)
            data["stats"]["epochs"] = epochs
        _print_json(data)
    else:
        from tuneproxy.render import show_report

        show_report(console, report, epochs)
    raise typer.Exit(0 if report.ok else 1)


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
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(exc.exit_code)
    except Exception as exc:  # a usage error or a bug: never a traceback unless asked for
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):  # typer's (vendored) click usage errors
            exc.show()
            sys.exit(exc.exit_code)
        if os.environ.get("TUNEPROXY_DEBUG"):
            raise
        err_console.print(f"[bold red]internal error:[/] {type(exc).__name__}: {exc}. "
                          "Set TUNEPROXY_DEBUG=1 for the traceback and please report it.", highlight=False)
        sys.exit(3)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
