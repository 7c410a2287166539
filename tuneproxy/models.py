"""Portable model names: one name per model, each backend's id for it, and each backend's default model.

The table ships with the package (``tuneproxy/data/models.toml``; every entry names its source and date).
:func:`resolve` turns what a user typed into the id a backend trains: a portable name becomes that backend's id
(an error listing the backends that offer it when this one does not), a raw backend id passes as it is, and
nothing becomes the backend's default. :func:`model_table` is what ``tuneproxy models`` shows: names ×
backends with the catalogue's training and serving prices and each backend's training context.
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib.resources
import sys
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tuneproxy.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

BACKENDS: tuple[str, ...] = ("openai", "together", "fireworks", "replicate", "local")
"""The backends the table names (a third-party backend has no row: its own ids are used as they are)."""


class ModelEntry(BaseModel):
    """One portable name and the id each backend trains it under (absent: the backend does not offer it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    ids: dict[str, str] = Field(description="Backend → its id for this model.")
    source: str = Field(min_length=1)
    as_of: dt.date
    verified: bool = Field(True, description="False: the id follows the backend's naming, not a cited page.")

    @model_validator(mode="before")
    @classmethod
    def _gather_ids(cls, data: object) -> object:
        if isinstance(data, dict):
            data = dict(data)
            data["ids"] = {name: data.pop(name) for name in BACKENDS if name in data}
        return data


class ModelTable(BaseModel):
    """The whole table: the entries and each backend's default (a portable name or an id)."""

    model_config = ConfigDict(frozen=True)

    defaults: dict[str, str]
    entries: tuple[ModelEntry, ...]

    def entry(self, name: str) -> ModelEntry | None:
        """The entry of portable name ``name`` (case-insensitive), or None."""
        lowered = name.lower()
        return next((e for e in self.entries if e.name == lowered), None)

    def portable_name(self, provider: str, model_id: str) -> str | None:
        """The portable name of a backend id, when the table has it."""
        return next((e.name for e in self.entries if e.ids.get(provider) == model_id), None)


class Resolved(BaseModel):
    """What :func:`resolve` made of a model argument."""

    model_id: str = Field(description="The id the backend trains.")
    portable: str | None = Field(None, description="The portable name, when the table knows this model.")
    default: bool = Field(False, description="True when no model was given and the backend's default was used.")

    @property
    def said(self) -> str:
        """One line saying which model was chosen, for a default."""
        named = f"{self.portable} ({self.model_id})" if self.portable and self.portable != self.model_id \
            else self.model_id
        return f"no model given: training {named}, this backend's default (`-m` or model= picks another)"


@functools.lru_cache(maxsize=1)
def load_table(path: str | None = None) -> ModelTable:
    """The model table (the packaged one unless ``path``); a malformed file is a ConfigError naming the entry."""
    text = Path(path).read_text(encoding="utf-8") if path else (
        importlib.resources.files("tuneproxy") / "data" / "models.toml").read_text(encoding="utf-8")
    data = tomllib.loads(text)
    entries = []
    for index, raw in enumerate(data.get("model", [])):
        try:
            entries.append(ModelEntry.model_validate(raw))
        except ValidationError as exc:
            raise ConfigError(f"models.toml entry {index + 1} ({raw.get('name', '?')}): {exc}") from None
    table = ModelTable(defaults=dict(data.get("defaults", {})), entries=tuple(entries))
    names = [e.name for e in entries]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ConfigError(f"models.toml names {', '.join(duplicated)} twice.")
    return table


def offered_by(name: str, table: ModelTable | None = None) -> dict[str, str]:
    """Backend → id for portable name ``name`` (empty when the name is not in the table)."""
    entry = (table or load_table()).entry(name)
    return dict(entry.ids) if entry else {}


def default_model(provider: str, table: ModelTable | None = None) -> str | None:
    """The id ``provider`` trains when no model is given (None for a backend the table does not name)."""
    table = table or load_table()
    chosen = table.defaults.get(provider)
    if chosen is None:
        return None
    entry = table.entry(chosen)
    return entry.ids.get(provider, chosen) if entry else chosen


def resolve(provider: str, model: str | None, table: ModelTable | None = None) -> Resolved:
    """The id ``provider`` trains for ``model``: a portable name becomes this backend's id, a raw id is kept,
    None is the backend's default. A portable name this backend does not offer is a ConfigError listing the
    backends that do."""
    table = table or load_table()
    if model is None or not model.strip():
        chosen = default_model(provider, table)
        if chosen is None:
            raise ConfigError(f"Give a model for {provider} (-m / model=): it has no default model in tuneproxy.")
        return Resolved(model_id=chosen, portable=table.portable_name(provider, chosen), default=True)
    entry = table.entry(model)
    if entry is None:
        return Resolved(model_id=model, portable=table.portable_name(provider, model))
    if provider in entry.ids:
        return Resolved(model_id=entry.ids[provider], portable=entry.name)
    if provider not in BACKENDS:  # a third-party backend: its own ids only
        return Resolved(model_id=model)
    others = ", ".join(f"{name} ({model_id})" for name, model_id in entry.ids.items())
    raise ConfigError(f"{provider} does not offer {entry.name} for fine-tuning. It is offered by: {others}. Choose "
                      f"one of those providers, or another model (`tuneproxy models --provider {provider}` lists "
                      "what it offers).")


def alternatives(model_id: str, table: ModelTable | None = None) -> Mapping[str, str]:
    """Backend → id of the same model, for a backend id the table knows (empty otherwise)."""
    table = table or load_table()
    entry = next((e for e in table.entries if model_id in e.ids.values()), None)
    return dict(entry.ids) if entry else {}


class ModelRow(BaseModel):
    """One portable name on one backend, as ``tuneproxy models`` shows it."""

    name: str
    provider: str
    model_id: str
    default: bool = Field(description="This backend trains it when no model is given.")
    verified: bool
    training: str | None = Field(None, description="The catalogue's training price, e.g. '$0.48/1M (≤16B, as of "
                                                   "2025-11-14)'; None when it has none.")
    training_usd_per_m: float | None = None
    serving: str = Field(description="What asking the tuned model costs (ServingCost.describe()).")
    context: int | None = Field(None, description="Training context in tokens, where the backend states one.")
    source: str
    as_of: dt.date


def model_rows(provider: str | None = None) -> list[ModelRow]:
    """Every (portable name, backend) pair of the table, with the catalogue's prices and the backend's context
    (``provider``: that backend's only). A backend that cannot be loaded is left out."""
    from tuneproxy import registry
    from tuneproxy.prices import load_catalogue

    table = load_table()
    catalogue = load_catalogue()
    backends: dict[str, object] = {}
    rows = []
    for entry in table.entries:
        for name, model_id in entry.ids.items():
            if provider is not None and name != provider:
                continue
            if name not in backends:
                try:
                    backends[name] = registry.create(name, require_key=False)
                except ConfigError:
                    backends[name] = None
            backend = backends[name]
            if backend is None:
                continue
            caps = backend.capabilities  # type: ignore[attr-defined]
            price = catalogue.match(name, model_id, "training")
            per_m = price.usd * 1e6 / price.per if price is not None else None
            rows.append(ModelRow(
                name=entry.name, provider=name, model_id=model_id, default=default_model(name, table) == model_id,
                verified=entry.verified, training_usd_per_m=per_m,
                training=f"${per_m:.2f} ({price.selector()}, as of {price.as_of})" if price is not None else None,
                serving=backend.serving_cost(model_id).describe(),  # type: ignore[attr-defined]
                context=caps.rules.context_for(model_id), source=entry.source, as_of=entry.as_of))
    return rows
