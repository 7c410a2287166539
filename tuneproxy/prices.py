"""The price catalogue, one model matcher, and turning billable quantities into dollars.

Backends report *quantities* (:class:`~tuneproxy.contract.Quantity`: tokens, seconds, hours); this module
prices them. Every figure lives in one file shipped with the package, ``tuneproxy/data/prices.toml``, one
``[[price]]`` table per price, each with the page it came from and the date it is attributed to
(docs/prices.md describes the fields). :func:`load_catalogue` reads it; :meth:`Catalogue.match` finds the
price for a provider, model and kind; :func:`price_quantities` adds a job's quantities up, with a range, one
human line per quantity, the sources used and whether any of them is stale.

Models are matched by exact id, alias, dated-snapshot prefix, or size class (a parameter count parsed from
the name as a whole token) — never by substring, so ``deepseek-v3-671b`` is not a "1b" model.
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib.resources
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tuneproxy.contract import Quantity
from tuneproxy.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

PriceKind = Literal["training", "preference_training", "inference_input", "inference_output",
                    "hardware_second", "gpu_hour", "deployment_hour"]

TOKEN_KINDS: frozenset[str] = frozenset({"training", "preference_training", "inference_input", "inference_output"})
"""Price kinds for tokens: selected by model id or size class."""
HARDWARE_KINDS: frozenset[str] = frozenset({"hardware_second", "gpu_hour", "deployment_hour"})
"""Price kinds for time on hardware: selected by hardware name (absent: any hardware)."""

QUANTITY_PRICE_KIND: dict[str, str] = {
    "training_tokens": "training",
    "preference_training_tokens": "preference_training",
    "input_tokens": "inference_input",
    "output_tokens": "inference_output",
    "hardware_seconds": "hardware_second",
    "gpu_hours": "gpu_hour",
    "deployment_hours": "deployment_hour",
}
"""Which kind of price each :class:`~tuneproxy.contract.Quantity` kind is priced by."""

STALE_AFTER = dt.timedelta(days=90)
"""A published price older than this (before ``today``) is flagged as stale."""

_QUANTITY_LABEL = {
    "training_tokens": "training tokens",
    "preference_training_tokens": "preference training tokens",
    "input_tokens": "input tokens",
    "output_tokens": "output tokens",
    "hardware_seconds": "hardware seconds",
    "gpu_hours": "GPU hours",
    "deployment_hours": "deployment hours",
}
_UNIT = {"hardware_second": "s", "gpu_hour": "GPU-hour", "deployment_hour": "GPU-hour"}
_BOUNDARY = frozenset("-:/@.")
# After a "-" or "." boundary, a prefix match is only accepted for a dated snapshot (2024-07-18, 0125,
# 20240718): "gpt-4o-mini-2024-07-18" is gpt-4o-mini, but "gpt-4.1-mini" is not gpt-4.1.
_SNAPSHOT = re.compile(r"\d{4,8}(?=$|[-:/@.])")
# A parameter count as a whole token: "8b", "1.5B", "8x7b"; not "a3b" (MoE active count), not "v3p1".
_PARAMS = re.compile(r"(?<![a-z0-9.])(?:(\d+)x)?(\d+(?:\.\d+)?)b(?![a-z0-9])", re.IGNORECASE)
# "17B-128E": an active-parameter count followed by the number of experts; the total is unknown.
_EXPERTS_AFTER = re.compile(r"-\d+e(?![a-z0-9])", re.IGNORECASE)


class PriceCatalogueError(ConfigError):
    """The price catalogue (or a price given to it) is malformed; the message names the entry."""


class Price(BaseModel):
    """One price: ``usd`` per ``per`` units of one ``kind``, for a provider's model, size class or hardware.

    Token prices select their model by exact ``model`` id (with optional ``aliases``) or by a size class
    ``min_params_b < params <= max_params_b``; hardware prices select by ``hardware`` (absent: any hardware).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$",
                          description="The backend it applies to: openai, together, fireworks, replicate, local.")
    kind: PriceKind = Field(description="What is being priced.")
    usd: float = Field(ge=0, description="Dollars per `per` units (the highest figure, where sources disagree).")
    usd_low: float | None = Field(None, ge=0, description="The lowest figure, where sources disagree by date.")
    per: float = Field(gt=0, description="Units the price is for: 1000000 for tokens, 1 for seconds or hours.")
    model: str | None = Field(None, min_length=1, description="An exact model id.")
    aliases: tuple[str, ...] = Field((), description="Other exact ids for the same model.")
    min_params_b: float | None = Field(None, ge=0, description="Size class: more than this many billion params.")
    max_params_b: float | None = Field(None, gt=0, description="Size class: at most this many billion params.")
    hardware: str | None = Field(None, min_length=1, description="Hardware name, for per-second/hour prices.")
    source: str = Field(min_length=1, description="The page the figure comes from (a URL), or 'local'.")
    as_of: dt.date = Field(description="The date the figure is attributed to.")
    note: str | None = Field(None, description="Provenance and caveats (UNVERIFIED where the source says so).")

    @model_validator(mode="after")
    def _one_selector(self) -> Price:
        sized = self.min_params_b is not None or self.max_params_b is not None
        if self.aliases and self.model is None:
            raise ValueError("aliases need a model")
        if self.kind in TOKEN_KINDS:
            if self.hardware is not None:
                raise ValueError(f"a {self.kind} price is selected by model or size class, not hardware")
            if (self.model is not None) == sized:
                raise ValueError("give exactly one selector: model, or min_params_b/max_params_b")
        elif self.model is not None or sized:
            raise ValueError(f"a {self.kind} price is selected by hardware only (or applies to any hardware)")
        if self.min_params_b is not None and self.max_params_b is not None and self.min_params_b >= self.max_params_b:
            raise ValueError("min_params_b must be below max_params_b")
        if self.usd_low is not None and self.usd_low > self.usd:
            raise ValueError("usd_low must not exceed usd")
        return self

    @property
    def published(self) -> bool:
        """True for a figure from a web page (it can go out of date); False for a local or user-set one."""
        return self.source.startswith(("http://", "https://"))

    def fits_size(self, params_b: float) -> bool:
        """Whether a model of ``params_b`` billion parameters falls in this price's size class."""
        if self.min_params_b is None and self.max_params_b is None:
            return False
        above = self.min_params_b is None or params_b > self.min_params_b
        below = self.max_params_b is None or params_b <= self.max_params_b
        return above and below

    def selector(self) -> str:
        """What the price applies to, for humans: a model id, a size class or a hardware name."""
        if self.model is not None:
            return self.model
        if self.kind in HARDWARE_KINDS:
            return self.hardware or "any hardware"
        if self.min_params_b is None:
            return f"≤{_number(self.max_params_b)}B"
        if self.max_params_b is None:
            return f">{_number(self.min_params_b)}B"
        return f">{_number(self.min_params_b)}B–{_number(self.max_params_b)}B"

    def rate(self) -> str:
        """The price for humans, e.g. ``$3.00/1M`` or ``$0.0058/s``."""
        if self.per == 1 and self.kind in _UNIT:
            return f"{_money(self.usd)}/{_UNIT[self.kind]}"
        if self.per == 1_000_000:
            return f"{_money(self.usd)}/1M"
        return f"{_money(self.usd)}/{_number(self.per)}"


def parameter_count_b(model: str) -> float | None:
    """The parameter count, in billions, written in a model name; None when it names none.

    A count is a whole token, case-insensitive: ``8B``, ``70b``, ``1.5b``, or a mixture ``8x7b`` (56).
    Version numbers (``llama-3.1-8b`` → 8, ``qwen2.5-72b`` → 72), MoE active counts (``qwen3-30b-a3b`` → 30;
    ``17B-128E`` is skipped, its total being unknown) and a "b" inside a word are not counts. When several
    counts appear, the largest is returned.
    """
    counts = []
    for found in _PARAMS.finditer(model):
        if _EXPERTS_AFTER.match(model, found.end()):
            continue
        experts = int(found.group(1)) if found.group(1) else 1
        counts.append(experts * float(found.group(2)))
    return max(counts) if counts else None


def _names(model: str) -> list[str]:
    """The forms a model name is matched under: as given, without ``ft:``, and after its last "/"."""
    names = [model.strip().casefold()]
    if names[0].startswith("ft:"):
        names.append(names[0][3:])
    names += [name.rsplit("/", 1)[1] for name in names if "/" in name]
    return list(dict.fromkeys(name for name in names if name))


def _prefixes(name: str, model_id: str) -> bool:
    """Whether ``model_id`` starts ``name`` at a boundary: the end, ":", "/", "@", or a dated snapshot."""
    if not name.startswith(model_id) or len(name) == len(model_id):
        return False
    rest = name[len(model_id):]
    if rest[0] not in _BOUNDARY:
        return False
    return rest[0] in ":/@" or bool(_SNAPSHOT.match(rest, 1))


def _base_name(model: str) -> str:
    """The part of a name that names the base model: before any ":" tag, suffix or job id."""
    name = model.strip()
    name = name[3:] if name.casefold().startswith("ft:") else name
    return name.split(":", 1)[0]


class Catalogue:
    """A set of prices, and the one matcher that picks a price for a provider, model and kind."""

    def __init__(self, prices: Iterable[Price]) -> None:
        """Hold ``prices``; two rows that would select the same thing are rejected."""
        self.prices: tuple[Price, ...] = tuple(prices)
        _check_unambiguous(self.prices)

    def __len__(self) -> int:
        """The number of prices."""
        return len(self.prices)

    def rows(self, provider: str, kind: str) -> list[Price]:
        """The provider's prices of one kind, in file order."""
        return [p for p in self.prices if p.provider == provider and p.kind == kind]

    def match(self, provider: str, model: str | None, kind: str, hardware: str | None = None) -> Price | None:
        """The price for ``model`` (or ``hardware``) on ``provider``; None when the catalogue has none.

        Token kinds, in order: (1) exact model id, (2) alias, (3) the longest model id that starts the name
        at a boundary (after dropping ``ft:``; also tried on the part after the last "/"), (4) the size class
        holding :func:`parameter_count_b` of the name. Hardware kinds: the exact hardware name, else a row
        for any hardware. Names never match by substring.
        """
        rows = self.rows(provider, kind)
        if kind in HARDWARE_KINDS:
            return _match_hardware(rows, hardware)
        if not model:
            return None
        return _match_model(rows, model)


def _match_hardware(rows: Sequence[Price], hardware: str | None) -> Price | None:
    """A hardware price: exact name first, then a row that applies to any hardware."""
    exact = [p for p in rows if hardware is not None and p.hardware == hardware]
    return (exact or [p for p in rows if p.hardware is None] or [None])[0]


def _match_model(rows: Sequence[Price], model: str) -> Price | None:
    """A token price by exact id, alias, dated-snapshot prefix, then size class."""
    names = _names(model)
    by_id = [p for p in rows if p.model is not None]
    for name in names:
        for price in by_id:
            if price.model.casefold() == name:
                return price
    for name in names:
        for price in by_id:
            if name in (alias.casefold() for alias in price.aliases):
                return price
    prefixed = [p for name in names for p in by_id if _prefixes(name, p.model.casefold())]
    if prefixed:
        return max(prefixed, key=lambda p: len(p.model))
    params = parameter_count_b(_base_name(model))
    if params is None:
        return None
    return next((p for p in rows if p.fits_size(params)), None)


def _check_unambiguous(prices: Sequence[Price]) -> None:
    """Reject two prices of one provider and kind that select the same model id, alias, hardware or sizes."""
    seen: dict[tuple[str, str, str], int] = {}
    for index, price in enumerate(prices):
        keys = [("model", name.casefold()) for name in (price.model, *price.aliases) if name]
        if price.kind in HARDWARE_KINDS:
            keys.append(("hardware", price.hardware or "*"))
        for what, value in keys:
            key = (price.provider, price.kind, f"{what}={value}")
            if key in seen:
                raise PriceCatalogueError(f"[[price]] entry {_describe(index, price)} selects the same {what} "
                                          f"{value!r} as entry {seen[key] + 1}; keep one of them.")
            seen[key] = index
    for index, price in enumerate(prices):
        for other_index, other in enumerate(prices[:index]):
            if (other.provider, other.kind) == (price.provider, price.kind) and _overlap(price, other):
                raise PriceCatalogueError(f"[[price]] entry {_describe(index, price)} has a size class overlapping "
                                          f"entry {other_index + 1} ({other.selector()}); make them disjoint.")


def _overlap(a: Price, b: Price) -> bool:
    """Whether two size classes share any parameter count."""
    if a.kind in HARDWARE_KINDS or a.model is not None or b.model is not None:
        return False
    low = max(a.min_params_b or 0.0, b.min_params_b or 0.0)
    high = min(a.max_params_b or float("inf"), b.max_params_b or float("inf"))
    return low < high


def _describe(index: int, entry: Any) -> str:
    """An entry, for error messages: its position and what it says it is."""
    if isinstance(entry, BaseModel):
        entry = entry.model_dump(exclude_none=True)
    if not isinstance(entry, dict):
        return f"{index + 1} ({entry!r})"
    parts = [f"{key}={entry[key]!r}" for key in ("provider", "kind", "model", "hardware") if key in entry]
    return f"{index + 1} ({', '.join(parts)})" if parts else str(index + 1)


def _parse_entry(index: int, entry: Any, where: str) -> Price:
    """One ``[[price]]`` table as a :class:`Price`, with the file's own rules on dates and sources."""
    if not isinstance(entry, dict):
        raise PriceCatalogueError(f"{where}: [[price]] entry {index + 1} is not a table.")
    label = f"{where}: [[price]] entry {_describe(index, entry)}"
    as_of = entry.get("as_of")
    if type(as_of) is not dt.date:
        raise PriceCatalogueError(f"{label}: as_of must be a TOML date such as 2026-10-08, not {as_of!r}.")
    try:
        price = Price(**entry)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'entry'}: {e['msg']}" for e in exc.errors())
        raise PriceCatalogueError(f"{label} is invalid: {problems}.") from None
    if price.provider != "local" and not price.published:
        raise PriceCatalogueError(f"{label}: source must be the URL (http:// or https://) the figure comes "
                                  f"from, not {price.source!r}.")
    return price


def parse_catalogue(text: str, where: str = "prices.toml") -> Catalogue:
    """A :class:`Catalogue` from TOML text; any problem is a :class:`PriceCatalogueError` naming the entry."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PriceCatalogueError(f"{where} is not valid TOML: {exc}.") from None
    unknown = sorted(set(data) - {"price"})
    if unknown:
        raise PriceCatalogueError(f"{where}: unknown top-level key(s) {', '.join(unknown)}; only [[price]] tables.")
    entries = data.get("price")
    if not isinstance(entries, list) or not entries:
        raise PriceCatalogueError(f"{where} holds no [[price]] tables.")
    prices = [_parse_entry(index, entry, where) for index, entry in enumerate(entries)]
    try:
        return Catalogue(prices)
    except PriceCatalogueError as exc:
        raise PriceCatalogueError(f"{where}: {exc}") from None


@functools.lru_cache(maxsize=1)
def _packaged_catalogue() -> Catalogue:
    """The catalogue shipped with the package, read once."""
    resource = importlib.resources.files("tuneproxy").joinpath("data/prices.toml")
    return parse_catalogue(resource.read_text(encoding="utf-8"), where="tuneproxy/data/prices.toml")


def load_catalogue(path: str | Path | None = None) -> Catalogue:
    """The packaged price catalogue (read once and cached), or the one in the TOML file at ``path``."""
    if path is None:
        return _packaged_catalogue()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PriceCatalogueError(f"Cannot read the price catalogue {path}: {exc.strerror or exc}.") from None
    return parse_catalogue(text, where=str(path))


class Pricing(BaseModel):
    """What a set of quantities costs: a figure, a range, one line per quantity, and the sources used."""

    usd: float | None = Field(description="The total; None when any quantity has no price.")
    usd_low: float | None = Field(description="The least it could be (quantity lows, lowest prices); None when "
                                              "any quantity has no price.")
    usd_high: float | None = Field(description="The most it could be (quantity highs, highest prices); None when "
                                               "any quantity has no price.")
    lines: list[str] = Field(default_factory=list, description="One human line per quantity.")
    sources: list[str] = Field(default_factory=list, description="'URL (as of DATE)' of each price used, once.")
    stale: bool = Field(False, description="A published price used is more than 90 days older than today.")


def price_quantities(provider: str, model: str, quantities: Sequence[Quantity], *, extra: Sequence[Price] = (),
                     catalogue: Catalogue | None = None, today: dt.date | None = None) -> Pricing:
    """Price ``quantities`` billed by ``provider`` for ``model`` (a quantity's own model overrides it).

    ``extra`` prices (a user's own figures) are matched before the catalogue (default: the packaged one).
    ``today`` (default: the current date) decides which prices are stale.
    """
    catalogue = catalogue if catalogue is not None else load_catalogue()
    mine = Catalogue(extra)
    today = today or dt.date.today()
    totals: list[tuple[float, float, float]] = []
    lines: list[str] = []
    used: list[Price] = []
    missing = False
    for quantity in quantities:
        kind = QUANTITY_PRICE_KIND[quantity.kind]
        name = quantity.model or model
        price = mine.match(provider, name, kind, quantity.hardware) or catalogue.match(
            provider, name, kind, quantity.hardware)
        if price is None:
            missing = True
            lines.append(f"no price for {_amount(quantity)} on {_target(provider, name, quantity)} in the catalogue")
            continue
        cost = _cost(quantity, price)
        totals.append(cost)
        used.append(price)
        lines.append(_line(quantity, price, cost))
    if missing:
        usd = low = high = None
    else:
        usd, low, high = (sum(column) for column in zip(*totals)) if totals else (0.0, 0.0, 0.0)
    sources = list(dict.fromkeys(f"{p.source} (as of {p.as_of.isoformat()})" for p in used))
    stale = any(p.published and today - p.as_of > STALE_AFTER for p in used)
    return Pricing(usd=usd, usd_low=low, usd_high=high, lines=lines, sources=sources, stale=stale)


def _cost(quantity: Quantity, price: Price) -> tuple[float, float, float]:
    """(cost, least cost, most cost) of one quantity at one price."""
    low_amount = quantity.amount if quantity.low is None else quantity.low
    high_amount = quantity.amount if quantity.high is None else quantity.high
    low_usd = price.usd if price.usd_low is None else price.usd_low
    return (quantity.amount * price.usd / price.per, low_amount * low_usd / price.per,
            high_amount * price.usd / price.per)


def _line(quantity: Quantity, price: Price, cost: tuple[float, float, float]) -> str:
    """One human line: amount × rate (what it matched, as of when) = cost."""
    usd, low, high = cost
    spread = f" ({_money(low)}–{_money(high)})" if (low, high) != (usd, usd) else ""
    return (f"{_amount(quantity)} × {price.rate()} ({price.provider} {price.selector()}, as of "
            f"{price.as_of.isoformat()}) = {_money(usd)}{spread}")


def _amount(quantity: Quantity) -> str:
    """A quantity for humans: ``1,234,000 training tokens``, with its range when it has one."""
    text = _number(quantity.amount)
    if quantity.low is not None or quantity.high is not None:
        low = _number(quantity.amount if quantity.low is None else quantity.low)
        high = _number(quantity.amount if quantity.high is None else quantity.high)
        text += f" ({low}–{high})"
    return f"{text} {_QUANTITY_LABEL.get(quantity.kind, quantity.kind)}"


def _target(provider: str, model: str | None, quantity: Quantity) -> str:
    """What was looked up, for a 'no price' line."""
    if QUANTITY_PRICE_KIND[quantity.kind] in HARDWARE_KINDS:
        return f"{provider} hardware {quantity.hardware or '(unnamed)'}"
    return f"{provider} {model or '(no model)'}"


def _number(value: float | None) -> str:
    """A number with thousands separators and no needless decimals."""
    if value is None:
        return "?"
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.4f}".rstrip("0").rstrip(".")


def _money(usd: float) -> str:
    """Dollars: cents for amounts of a cent or more, else as many decimals as it takes (``$0.000725``)."""
    if usd == 0 or abs(usd) >= 0.01:
        return f"${usd:,.2f}"
    digits = f"{usd:.10f}".rstrip("0")
    return "$" + (digits if not digits.endswith(".") else digits + "00")
