"""The cost desk: one dataset estimated on every backend that offers a model, side by side, before anything is
paid (``tuneproxy estimate DATA --all``, :meth:`tuneproxy.Tuner.estimate_all`).

The data is read and its tokens counted once: every backend that counts with the same encoding (tiktoken's
``o200k_base``, exactly for OpenAI and as a ±25% estimate for the others) shares that count, so estimating five
backends costs little more than validating once. Each backend then prices the count its own way (the same
path as ``Tuner.estimate``) and says what serving the tuned model costs. Rows are sorted by cost, unknown last.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from tuneproxy import registry
from tuneproxy.contract import CostEstimate, DatasetRules, ServingCost, Stats
from tuneproxy.errors import ConfigError, DatasetError, TuneproxyError
from tuneproxy.models import BACKENDS, load_table, offered_by

EVERY_FORMAT = frozenset({"chat", "completion", "text", "preference"})


class DeskRow(BaseModel):
    """One backend's side of the desk: its model, its estimate, what serving costs, what does not fit."""

    provider: str
    display_name: str
    model: str = Field(description="The backend's id for the model.")
    portable: str | None = Field(None, description="The model's portable name, when the model table knows it.")
    epochs: int
    billable_tokens: int | None = Field(None, description="Tokens × epochs, as this backend counts them.")
    tokenizer: str = Field("", description="How this backend's tokens were counted.")
    exact: bool = Field(False, description="Whether that count is exact (else within ±error_bound).")
    error_bound: float = 0.0
    estimate: CostEstimate | None = None
    rate: str | None = Field(None, description="The training price used, its selector and date, e.g. "
                                               "'$0.48/1M (≤16B, 2025-11-14)' (the full basis: estimate.basis).")
    serving: ServingCost | None = None
    problems: list[str] = Field(default_factory=list, description="What in the data this backend would refuse "
                                                                  "(`tuneproxy validate -p` checks it all).")
    error: str | None = Field(None, description="Why this backend could not estimate (the row has no figure).")

    @property
    def sort_key(self) -> tuple[int, float]:
        usd = self.estimate.usd if self.estimate is not None else None
        return (0, usd) if usd is not None else (1, 0.0)


class Desk(BaseModel):
    """The whole desk: the data's figures and one row per backend, cheapest first."""

    model: str | None = Field(description="The portable model name compared (None: each backend's default).")
    examples: int
    total_tokens: int
    tokenizer: str
    exact: bool
    rows: list[DeskRow]

    @property
    def stale(self) -> bool:
        """Whether any row was priced with a price more than 90 days old."""
        return any(r.estimate is not None and r.estimate.stale for r in self.rows)


def estimate_all(data: Any, model: str | None = None, *, providers: Sequence[str] | None = None,
                 provider_options: Mapping[str, Mapping[str, Any]] | None = None, **hyperparameters: Any) -> Desk:
    """Estimate fine-tuning ``data`` on every backend that offers ``model`` (a portable name; None: each
    backend's default model), with the same hyperparameters (one a backend does not take is left out of its
    row, which says so), sorted by cost.

    ``providers`` limits the backends; ``provider_options`` gives each its options (by name). A raw backend id
    compares nothing, so it is refused: name the model portably (``tuneproxy models`` lists the names).
    """
    from tuneproxy.dataset.validate import first_findings, validate
    from tuneproxy.tuner import Tuner

    table = load_table()
    if model is not None and table.entry(model) is None:
        raise ConfigError(f"{model!r} is not a portable model name, so there is nothing to compare it with on other "
                          "backends: use a name from `tuneproxy models` (for example llama-3.1-8b-instruct), or "
                          "estimate one backend with -p.")
    offering = offered_by(model, table) if model is not None else {}
    names = [p for p in (providers or registry.names()) if model is None or p in offering]
    if not names:
        raise ConfigError(f"None of {', '.join(providers or ())} offers {model}.")
    options = provider_options or {}
    tuners: dict[str, Tuner] = {}
    rows: dict[str, DeskRow] = {}
    dropped: dict[str, list[str]] = {}
    for name in names:
        try:
            taken = registry.provider_class(name)(options.get(name)).capabilities.parameters
            dropped[name] = sorted(key for key in hyperparameters if key not in taken)
            tuners[name] = Tuner(name, model, show_progress=False, provider_options=options.get(name),
                                 **{k: v for k, v in hyperparameters.items() if k in taken})
        except TuneproxyError as exc:
            display = _display(name)
            rows[name] = DeskRow(provider=name, display_name=display, model=offering.get(name, "?"), epochs=0,
                                 error=str(exc))
    if not tuners:
        return Desk(model=model, examples=0, total_tokens=0, tokenizer="", exact=False,
                    rows=sorted(rows.values(), key=lambda r: r.provider))
    first = next(iter(tuners.values()))
    report = validate(data, rules=DatasetRules(formats=EVERY_FORMAT), counter=first.counter,
                      check_size=False)
    if report.errors or report.stats is None:
        shown = "\n".join(f"  line {f.line}: {f.code} {f.message}" for f in first_findings(report))
        raise DatasetError(f"The data has {report.errors} error(s); nothing was estimated. First ones:\n{shown}\n"
                           "`tuneproxy validate DATA` lists them all.")
    counted: dict[Any, Stats] = {_encoding(first.counter): report.stats}
    for name, tuner in tuners.items():
        rows[name] = _row(tuner, report, counted, data)
        if dropped.get(name):
            rows[name].problems.append(f"it takes no {', '.join(dropped[name])}: estimated without")
    ordered = sorted(rows.values(), key=lambda r: r.sort_key)
    stats = report.stats
    return Desk(model=model, examples=stats.examples, total_tokens=stats.total_tokens,
                tokenizer=stats.tokenizer, exact=stats.exact, rows=ordered)


def _row(tuner: Any, report: Any, counted: dict[Any, Stats], data: Any) -> DeskRow:
    """One backend's estimate from the shared count (recounted only for another encoding)."""
    provider = tuner.provider
    caps = provider.capabilities
    counter = tuner.counter
    key = _encoding(counter)
    if key not in counted:
        from tuneproxy.dataset.validate import load_examples, token_stats

        counted[key] = token_stats(load_examples(data), counter)
    stats = counted[key].model_copy(update={"exact": counter.exact, "error_bound": counter.error_bound,
                                            "tokenizer": counter.name})
    epochs = tuner.hyperparameters.epochs or 0
    row = DeskRow(provider=tuner.provider_name, display_name=caps.display_name, model=tuner.model,
                  portable=tuner.model_choice.portable, epochs=epochs, billable_tokens=stats.billable_tokens(epochs),
                  tokenizer=stats.tokenizer, exact=stats.exact, error_bound=stats.error_bound,
                  problems=_problems(caps.rules, report, stats, tuner.model, data, caps.display_name))
    try:
        row.estimate = tuner.estimate_from(stats, report.format or "chat", check=False)
        row.rate = _rate(provider, tuner.model, row.estimate)
        row.serving = provider.serving_cost(tuner.model)
    except TuneproxyError as exc:
        row.error = str(exc)
    return row


def _rate(provider: Any, model: str, estimate: CostEstimate) -> str | None:
    """The price the estimate's first quantity was priced at (the backend's own prices first, as the core
    prices), in a few words; None when nothing was priced."""
    from tuneproxy.prices import QUANTITY_PRICE_KIND, Catalogue, load_catalogue

    if estimate.authoritative:
        return "the service's own figure"
    if not estimate.quantities:
        return None
    quantity = estimate.quantities[0]
    kind = QUANTITY_PRICE_KIND[quantity.kind]
    own = list(provider.prices())
    price = (Catalogue(own).match(provider.name, quantity.model or model, kind, quantity.hardware) if own else None) \
        or load_catalogue().match(provider.name, quantity.model or model, kind, quantity.hardware)
    return f"{price.rate()} ({price.selector()}, {price.as_of})" if price is not None else "no price known"


def _problems(rules: DatasetRules, report: Any, stats: Stats, model: str, data: Any, service: str) -> list[str]:
    """What this backend's own rules would refuse, from the figures already known: the format, the dataset-level
    rules validation applies (:func:`tuneproxy.dataset.validate.size_findings`), the longest example against the
    model's context (a full check is ``tuneproxy validate -p``)."""
    from tuneproxy.dataset.validate import size_findings

    found = [f"it does not train on {report.format} examples"] if report.format and \
        report.format not in rules.formats else []
    size = Path(data).stat().st_size if isinstance(data, (str, Path)) and Path(data).is_file() else None
    found += [f.message for f in size_findings(stats.examples, size, rules, service) if f.severity == "error"]
    context = rules.context_for(model)
    if context is not None and stats.tokens_max > context:
        found.append(f"the longest example ({stats.tokens_max:,} tokens) is over its {context:,}-token context")
    return found


def _encoding(counter: Any) -> Any:
    """What a counter counts with: counters on the same tiktoken encoding count the same (only their
    exactness differs), anything else is its own."""
    inner = getattr(counter, "_inner", counter)
    return getattr(inner, "encoding_name", None) or id(counter)


def _display(name: str) -> str:
    try:
        return registry.provider_class(name).CAPABILITIES.display_name
    except TuneproxyError:
        return name


__all__ = ["BACKENDS", "Desk", "DeskRow", "estimate_all"]
