"""Dollars from quantities: the core prices what a backend forecasts or reports with the catalogue.

A backend says *how much* (tokens, seconds, GPU-hours: :class:`~tuneproxy.contract.Quantity`); this
module says *what it costs*, with :func:`tuneproxy.prices.price_quantities`, the backend's own extra
prices first (a user's GPU-hour price). A figure the service itself states in money wins and is kept
as such (``authoritative``).
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneproxy.contract import CostEstimate, JobRecord, Provider, Quantity, Stats
from tuneproxy.prices import Pricing, price_quantities

TOKEN_QUANTITIES = frozenset({"training_tokens", "preference_training_tokens", "input_tokens", "output_tokens"})


def _widened(quantities: list[Quantity], stats: Stats | None) -> list[Quantity]:
    """Token counts made with an estimating tokenizer get its error bound as their range."""
    if stats is None or stats.exact or not stats.error_bound:
        return quantities
    bound = stats.error_bound
    return [q.model_copy(update={"low": (q.low if q.low is not None else q.amount) * (1 - bound),
                                 "high": (q.high if q.high is not None else q.amount) * (1 + bound)})
            if q.kind in TOKEN_QUANTITIES else q for q in quantities]


def _pricing(provider: Provider, model: str, quantities: list[Quantity]) -> Pricing:
    return price_quantities(provider.name, model, quantities, extra=list(provider.prices()))


def price_estimate(provider: Provider, estimate: CostEstimate, stats: Stats | None = None) -> CostEstimate:
    """The estimate with dollars: the service's own figure as it is, else its quantities priced (the
    range widened by the token count's error bound when the count is not exact)."""
    if estimate.authoritative or not estimate.quantities:  # nothing to price: the figure stays unknown
        return estimate
    quantities = _widened(list(estimate.quantities), stats)
    pricing = _pricing(provider, estimate.model, quantities)
    basis = f"{estimate.basis}: " + "; ".join(pricing.lines) if pricing.lines else estimate.basis
    if stats is not None and not stats.exact:
        basis += f". Token count: {stats.tokenizer}, so the range spans ±{stats.error_bound:.0%}"
    band = size_band_note(provider, estimate.model, quantities)
    if band:
        basis += f". {band}"
    if pricing.stale:
        basis += ". A price used is more than 90 days old: check the provider's pricing page"
    return estimate.model_copy(update={
        "quantities": quantities, "usd": pricing.usd, "usd_low": pricing.usd_low, "usd_high": pricing.usd_high,
        "basis": basis + ".", "price_source": "; ".join(pricing.sources) or None, "stale": pricing.stale,
        "assumed_band": band or None,
    })


def size_band_note(provider: Provider, model: str, quantities: list[Quantity]) -> str:
    """For a model the model table does not know, priced by a size class read from its name: a sentence
    saying which band was assumed and why (empty when the model is known, or priced by its own id)."""
    from tuneproxy.models import alternatives
    from tuneproxy.prices import QUANTITY_PRICE_KIND, TOKEN_KINDS, load_catalogue, parameter_count_b

    if alternatives(model):
        return ""
    catalogue = load_catalogue()
    for quantity in quantities:
        kind = QUANTITY_PRICE_KIND.get(quantity.kind)
        if kind not in TOKEN_KINDS:
            continue
        price = catalogue.match(provider.name, quantity.model or model, kind)
        if price is not None and price.model is None:
            size = parameter_count_b(quantity.model or model)
            return (f"{model} is not in tuneproxy's model list, so its price is assumed from its size band "
                    f"({price.selector()}, read as {size:g}B from its name): check {provider.name}'s price for it")
    return ""


@dataclass(frozen=True)
class Bill:
    """What a job cost: the service's stated figure, or its quantities priced."""

    usd: float | None
    basis: str
    price_source: str | None
    authoritative: bool


def bill_for(provider: Provider, record: JobRecord) -> Bill | None:
    """The bill of a job in its current state; None when the backend reported nothing billable yet."""
    if record.billed_usd is not None:
        return Bill(record.billed_usd, f"{record.provider} billed figure for {record.job_id}", None, True)
    if not record.billable:
        return None
    pricing = _pricing(provider, record.base_model, list(record.billable))
    basis = f"{record.provider} reported for {record.job_id}: " + "; ".join(pricing.lines)
    if pricing.usd is None:
        basis += " (no price known to turn it into dollars)"
    return Bill(pricing.usd, basis, "; ".join(pricing.sources) or None, False)
