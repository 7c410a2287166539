"""The configuration file, ``tuneproxy.toml``, and the one merge of every place a setting can come from.

A run's settings come from four places, the first that sets a key winning:

1. **flags**: what the user passed on the command line (or as keyword arguments to ``Tuner.from_config``);
2. **environment**: the ``TUNEPROXY_*`` variables in :data:`ENVIRONMENT` (a backend's own variables, such as
   ``FIREWORKS_ACCOUNT_ID``, stay the backend's business);
3. **the config file**: ``tuneproxy.toml``, or the ``[tool.tuneproxy]`` table of a ``pyproject.toml``
   (:func:`find_config` says which one applies);
4. **defaults**: each setting's own (a backend's default model, the service's default hyperparameters).

:func:`load_config` reads and validates a file: an unknown key or a wrong type is a :class:`ConfigError` that
names the file, the line and the nearest valid key. :func:`resolve` is the merge, one pure function.
Keys (credentials) never come from the file: one found there is ignored with a :class:`ConfigKeyWarning` and
scrubbed from every output. docs/config.md describes every key.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from tuneproxy import registry
from tuneproxy.contract import PORTABLE_HYPERPARAMETERS, GenerationParams, Hyperparameters, ProviderOptions
from tuneproxy.errors import ConfigError, redact, register_secret_value

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

FILE_NAME = "tuneproxy.toml"
PYPROJECT = "pyproject.toml"
PYPROJECT_TABLE = ("tool", "tuneproxy")

# The environment variables for [tune] keys (by their Python name). Kept few on purpose: what a CI job or a
# shell session changes between runs. Every other key is set in the file or as a flag.
ENVIRONMENT: dict[str, str] = {
    "TUNEPROXY_PROVIDER": "provider",
    "TUNEPROXY_MODEL": "model",
    "TUNEPROXY_BUDGET": "budget_usd",
    "TUNEPROXY_EPOCHS": "epochs",
    "TUNEPROXY_LEARNING_RATE": "learning_rate",
    "TUNEPROXY_HOLDOUT": "holdout",
}

# A key whose name says it holds a credential. ``max_tokens`` or ``tokens_per_second`` do not match: the word
# must stand alone between underscores.
CREDENTIAL_NAME = re.compile(r"(?i)(?:^|[_-])(?:key|apikey|secret|token|password|passwd|credentials?)(?:$|[_-])")


class ConfigWarning(UserWarning):
    """Something in the configuration is ignored; the message says what and why."""


class ConfigKeyWarning(ConfigWarning):
    """A key (credential) was found in a config file: it is not used, and it is scrubbed from every output."""


class NotForThisProviderWarning(ConfigWarning):
    """A hyperparameter set in the config file is left out: the chosen backend does not take it."""


# --------------------------------------------------------------------------- the file's shape


def _check_holdout(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("holdout is a fraction (0.1), a count (100) or a path (\"holdout.jsonl\"), not true/false")
    if isinstance(value, int):
        if value < 1:
            raise ValueError("a holdout count is 1 or more")
        return value
    if isinstance(value, float):
        if not 0 < value < 1:
            raise ValueError("a holdout fraction is between 0 and 1; write a count as a whole number (100)")
        return value
    if isinstance(value, (str, Path)) and str(value).strip():
        return value
    raise ValueError("holdout is a fraction (0.1), a count (100) or a path (\"holdout.jsonl\")")


class TuneSection(Hyperparameters):
    """``[tune]``: what to train, where, with which portable hyperparameters, for how much, on which split.

    The hyperparameters are :class:`Hyperparameters`' fields; ``seed`` among them is the training seed (sent to
    the backends that take one). The holdout split has its own seed, ``holdout_seed``.
    """

    model_config = ConfigDict(extra="forbid", validate_by_name=False)

    provider: str | None = Field(None, description="Where it trains: openai, together, fireworks, replicate, local.")
    model: str | None = Field(None, description="Base model: a portable name or the backend's id (default: the "
                                                "backend's default model).")
    budget_usd: float | None = Field(None, alias="budget", ge=0,
                                     description="Refuse a job whose estimate is over this many USD.")
    holdout: Any = Field(None, description="Validation data: a fraction (0.1) or count (100) of the training data "
                                           "to hold out, or a JSONL path (relative to the file).")
    holdout_seed: int | None = Field(None, ge=0, description="Seed of the holdout split (default 0).")
    stratify: str | None = Field(None, min_length=1,
                                 description="Metadata key whose values keep their share in the holdout.")

    @field_validator("holdout")
    @classmethod
    def _holdout_kind(cls, value: Any) -> Any:
        return _check_holdout(value)


class EvalSettings(BaseModel):
    """``[eval]``: how ``tuneproxy eval`` and ``TunedModel.evaluate`` compare the tuned model (unset: their
    defaults). docs/scorers.md lists the scorers."""

    model_config = ConfigDict(extra="forbid")

    baselines: list[str] | None = Field(None, description="Compare with: base, few-shot:K, a job id, URL#MODEL "
                                                          "(default: [\"base\"]).")
    scorers: list[str] | None = Field(None, description="Scorer specs: exact, json_fields, label:FIELD, ... "
                                                        "(default: chosen from the references).")
    slice_by: str | None = Field(None, min_length=1, description="Metadata key to compare per value of.")
    concurrency: int | None = Field(None, ge=1, description="Requests in flight per system (default 8).")
    max_tokens: int | None = Field(None, ge=1, description="Most tokens per answer (default 256).")
    seed: int | None = Field(None, ge=0, description="Seed of the bootstrap, and of generation where honoured "
                                                     "(default 0).")
    judge: str | None = Field(None, min_length=1, description="URL#MODEL of the LLM judge for judge: scorers and "
                                                              "pairwise.")
    pairwise: str | None = Field(None, min_length=1, description="Criteria for the judge to pick the better "
                                                                 "answer by.")

    def evaluate_arguments(self) -> dict[str, Any]:
        """The settings that are set, as keyword arguments of ``TunedModel.evaluate`` (the judge as an
        endpoint on its OpenAI-compatible server, ``max_tokens`` and ``seed`` in its generation params)."""
        given = self.model_dump(exclude_none=True)
        arguments: dict[str, Any] = {key: given[key] for key in ("baselines", "scorers", "slice_by", "concurrency",
                                                                   "seed", "pairwise") if key in given}
        params = {key: given[key] for key in ("max_tokens", "seed") if key in given}
        if params:
            arguments["params"] = GenerationParams(**params)
        if self.judge:
            url, _, model = self.judge.partition("#")
            arguments["judge"] = registry.url_endpoint(url, model)
        return arguments


class Config(BaseModel):
    """A validated config file: ``[tune]``, ``[providers.<name>]`` (each backend's options, as given) and
    ``[eval]``. Build one with :func:`load_config`, or in Python (then no line numbers, paths from the cwd)."""

    model_config = ConfigDict(extra="forbid")

    tune: TuneSection = Field(default_factory=TuneSection, description="What to train and how.")
    providers: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Backend name -> its options (`tuneproxy providers` lists them).")
    eval: EvalSettings = Field(default_factory=EvalSettings, description="How to evaluate.")

    _source: Path | None = PrivateAttr(None)

    @property
    def source(self) -> Path | None:
        """The file this was read from (None: built in Python)."""
        return self._source


class Settings(BaseModel):
    """Everything one run needs, merged from flags, environment, file and defaults (:func:`resolve`)."""

    model_config = ConfigDict(extra="forbid")

    provider: str
    model: str | None = Field(None, description="None: the backend's default model.")
    hyperparameters: dict[str, Any] = Field(default_factory=dict, description="Portable name -> value.")
    budget_usd: float | None = None
    holdout: float | int | Path | None = None
    holdout_seed: int = 0
    stratify: str | None = None
    provider_options: dict[str, Any] = Field(default_factory=dict, description="The chosen backend's options.")
    eval: EvalSettings = Field(default_factory=EvalSettings)
    source: Path | None = Field(None, description="The config file the settings were read from, if any.")

    def tuner_arguments(self) -> dict[str, Any]:
        """Keyword arguments for :class:`~tuneproxy.tuner.Tuner` (``model`` only when one is set)."""
        arguments: dict[str, Any] = {"provider": self.provider, "budget_usd": self.budget_usd,
                                     "provider_options": dict(self.provider_options), **self.hyperparameters}
        if self.model is not None:
            arguments["model"] = self.model
        return arguments

    def fit_arguments(self) -> dict[str, Any]:
        """Keyword arguments for ``Tuner.fit``: the holdout, its split's seed and stratification key."""
        return {"holdout": self.holdout, "seed": self.holdout_seed, "stratify": self.stratify}


FILE_KEYS: dict[str, tuple[str, ...]] = {
    "": tuple(Config.model_fields),
    "tune": tuple(field.alias or name for name, field in TuneSection.model_fields.items()),
    "eval": tuple(EvalSettings.model_fields),
}

# --------------------------------------------------------------------------- where things are in the file

_PART = r"[A-Za-z0-9_-]+|\"(?:[^\"\\]|\\.)*\"|'[^']*'"
_DOTTED = rf"(?:{_PART})(?:\s*\.\s*(?:{_PART}))*"
_HEADER = re.compile(rf"^\s*\[\s*({_DOTTED})\s*\]\s*(?:#.*)?$")
_TABLE_ARRAY = re.compile(r"^\s*\[\[")
_ASSIGNMENT = re.compile(rf"^\s*({_DOTTED})\s*=")


def _parts(dotted: str) -> tuple[str, ...]:
    return tuple(p[1:-1] if p[:1] in "\"'" else p for p in re.findall(_PART, dotted))


def line_of(text: str, keys: Sequence[str]) -> int | None:
    """The line (from 1) of TOML ``text`` where the key path ``keys`` is written: ``("tune", "epochs")`` is
    found as ``epochs = 3`` under ``[tune]``, as ``tune.epochs = 3``, or ``("tune",)`` as its header.

    tomllib keeps no positions, so this scans the text: table headers, ``key =`` lines (dotted keys too) and
    multi-line strings (skipped). When the exact path is not written out (a key inside an inline table) it is
    the line of the longest part of the path that is; None when no part is."""
    target = tuple(keys)
    best: int | None = None
    best_length = 0
    table: tuple[str, ...] | None = ()
    in_string: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if in_string:
            if line.count(in_string) % 2:
                in_string = None
            continue
        header, assignment = _HEADER.match(line), _ASSIGNMENT.match(line)
        if _TABLE_ARRAY.match(line):
            table, written = None, None
        elif header:
            table = written = _parts(header.group(1))
        elif assignment and table is not None:
            written = table + _parts(assignment.group(1))
        else:
            written = None
        if assignment:
            for quote in ('"""', "'''"):
                if line.count(quote) % 2:
                    in_string = quote
        if written is None:
            continue
        if written == target:
            return number
        if best_length < len(written) <= len(target) and target[:len(written)] == written:
            best, best_length = number, len(written)
    return best


def _where(path: Path, text: str, prefix: tuple[str, ...], keys: Sequence[str]) -> str:
    line = line_of(text, prefix + tuple(keys))
    return f"{path}, line {line}" if line else str(path)


def _table_name(keys: Sequence[Any]) -> str:
    return f"[{'.'.join(map(str, keys))}] " if keys else ""


def _nearest(word: str, choices: Iterable[str]) -> str:
    near = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.5)
    return f" (did you mean {near[0]!r}?)" if near else ""


_TOML_TYPES = {str: "a string", bool: "true/false", int: "a whole number", float: "a number", list: "an array",
               dict: "a table"}


def _toml_type(value: Any) -> str:
    return next((name for kind, name in _TOML_TYPES.items() if type(value) is kind), "a date or time")


# --------------------------------------------------------------------------- finding and reading the file


def find_config(start: Path | None = None) -> Path | None:
    """The config file that applies in ``start`` (default: the current directory).

    Each directory from ``start`` upwards is looked at in turn: its ``tuneproxy.toml`` if there is one, else
    its ``pyproject.toml`` if that has a ``[tool.tuneproxy]`` table. The search stops after the first directory
    holding ``.git`` (the top of the project) or at the filesystem root. None: no file applies."""
    folder = (start or Path.cwd()).resolve()
    for directory in (folder, *folder.parents):
        candidate = directory / FILE_NAME
        if candidate.is_file():
            return candidate
        pyproject = directory / PYPROJECT
        if pyproject.is_file() and _has_tool_table(pyproject):
            return pyproject
        if (directory / ".git").exists():
            return None
    return None


def _has_tool_table(pyproject: Path) -> bool:
    try:
        text = pyproject.read_text(encoding="utf-8")
    except OSError:
        return False
    if "tuneproxy" not in text:  # the cheap test first: most pyproject files never mention it
        return False
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{pyproject} is not valid TOML ({exc}), so its [tool.tuneproxy] table cannot be read: "
                          "fix the file, or keep the settings in a tuneproxy.toml next to it.") from None
    return isinstance(data.get("tool"), dict) and "tuneproxy" in data["tool"]


def load_config(path: str | Path) -> Config:
    """Read and validate a ``tuneproxy.toml`` (or a ``pyproject.toml``'s ``[tool.tuneproxy]`` table).

    Every problem (an unknown key, a wrong type, a value out of range, an unknown provider) is listed in one
    :class:`ConfigError` with its line and, for a misspelt key, the nearest valid one. A key (credential) in
    the file is dropped with a :class:`ConfigKeyWarning` and scrubbed from every output from now on. A
    relative holdout path is taken from the file's folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Cannot read the config file {path} ({exc.__class__.__name__}: {exc}). Check the path "
                          "(`tuneproxy init` writes a starter file).") from None
    try:
        data: Any = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}. Fix that line (docs/config.md shows the "
                          "format).") from None
    prefix: tuple[str, ...] = ()
    if path.name == PYPROJECT:
        prefix = PYPROJECT_TABLE
        data = data.get("tool", {}).get("tuneproxy")
        if not isinstance(data, dict):
            raise ConfigError(f"{path} has no [tool.tuneproxy] table: add one, or keep the settings in a "
                              "tuneproxy.toml (`tuneproxy init` writes one).")
    data = _drop_credentials(data, path, text, prefix)
    config = _validated(data, path, text, prefix)
    holdout = config.tune.holdout
    if isinstance(holdout, str) and not Path(holdout).expanduser().is_absolute():
        config.tune.holdout = str(path.parent / holdout)
    config._source = path
    return config


def _validated(data: dict[str, Any], path: Path, text: str, prefix: tuple[str, ...]) -> Config:
    problems: list[str] = []
    try:
        config = Config.model_validate(data, strict=True)
    except ValidationError as exc:
        for error in exc.errors():
            problems.append(_problem(error, data, path, text, prefix))
        config = None
    known = registry.names()
    provider = data.get("tune", {}).get("provider") if isinstance(data.get("tune"), dict) else None
    if isinstance(provider, str) and provider not in known:
        problems.append(f"{_where(path, text, prefix, ('tune', 'provider'))}: {_table_name((*prefix, 'tune'))}"
                        f"provider: unknown provider {provider!r}"
                        f"{_nearest(provider, known)}; known providers: {', '.join(known)}")
    for name, options in (data.get("providers") or {}).items() if isinstance(data.get("providers"), dict) else ():
        problems.extend(_provider_problems(name, options, known, path, text, prefix))
    if problems or config is None:
        shown = "\n".join(f"  {p}" for p in sorted(problems, key=_line_number))
        raise ConfigError(f"{path} has {len(problems)} problem(s):\n{shown}\nFix them: docs/config.md lists every "
                          "key (`tuneproxy init` writes a starter file that loads).")
    return config


def _line_number(problem: str) -> int:
    found = re.search(r", line (\d+): ", problem)
    return int(found.group(1)) if found else 0


def _problem(error: Any, data: dict[str, Any], path: Path, text: str, prefix: tuple[str, ...]) -> str:
    loc = tuple(map(str, error["loc"]))
    section = loc[0] if len(loc) > 1 and loc[0] in ("tune", "eval", "providers") else ""
    keys = loc[:2] if section else loc[:1]
    key = keys[-1]
    rest = "".join(f"[{part}]" for part in loc[len(keys):])
    where = f"{_where(path, text, prefix, keys)}: {_table_name(prefix + keys[:-1])}"
    if error["type"] == "extra_forbidden":
        return f"{where}unknown key {key!r}{_nearest(key, FILE_KEYS.get(section, ()))}"
    given = f" (got {_toml_type(error['input'])})" if error["type"].endswith("_type") else ""
    message = error["msg"].removeprefix("Value error, ")
    return f"{where}{key}{rest}: {message}{given}"


def _provider_problems(name: Any, options: Any, known: list[str], path: Path, text: str,
                       prefix: tuple[str, ...]) -> list[str]:
    where = _where(path, text, prefix, ("providers", str(name)))
    table = _table_name((*prefix, "providers", str(name)))
    if name not in known:
        return [f"{where}: unknown provider {table.strip()}{_nearest(name, known)}; known providers: "
                f"{', '.join(known)}"]
    if not isinstance(options, dict):
        return []  # reported by the file's own validation: [providers.<name>] must be a table
    options_model = registry.provider_class(name).Options
    try:
        options_model.model_validate(options)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            key = str(error["loc"][0]) if error["loc"] else ""
            where = _where(path, text, prefix, ("providers", name, key))
            if error["type"] == "extra_forbidden":
                problems.append(f"{where}: {table}unknown option {key!r}"
                                f"{_nearest(key, options_model.model_fields)} (`tuneproxy providers` lists "
                                f"{name}'s options)")
            else:
                problems.append(f"{where}: {table}{key}: {error['msg']}")
        return problems
    return []


# --------------------------------------------------------------------------- keys never come from the file


def _key_variable(table: tuple[str, ...]) -> str:
    """The environment variable that holds the key of the backend whose table this is, if it has one."""
    if len(table) >= 2 and table[0] == "providers" and table[1] in registry.names():
        try:
            credentials = registry.provider_class(table[1]).CAPABILITIES.credentials
        except ConfigError:
            credentials = None
        if credentials:
            return credentials.env_var
    return "the provider's key variable (`tuneproxy providers` names it)"


def _key_shapes() -> dict[str, str]:
    """Key pattern -> its environment variable, of every registered backend (importing each one also makes
    its key shape known to :func:`redact`)."""
    shapes = {}
    for name in registry.names():
        try:
            credentials = registry.provider_class(name).CAPABILITIES.credentials
        except ConfigError:
            continue
        if credentials and credentials.key_pattern:
            shapes[credentials.key_pattern] = credentials.env_var
    return shapes


def _drop_credentials(data: dict[str, Any], path: Path, text: str, prefix: tuple[str, ...]) -> dict[str, Any]:
    """``data`` without keys named like credentials; every value that is or looks like a key is registered
    for scrubbing and warned about, by line, never shown."""
    shapes = _key_shapes()

    def variable_for(value: str, table: tuple[str, ...]) -> str:
        shaped = next((variable for pattern, variable in shapes.items() if re.search(pattern, value)), None)
        return shaped or _key_variable(table)

    def walk(node: Any, keys: tuple[str, ...]) -> Any:
        if isinstance(node, dict):
            kept = {}
            for key, value in node.items():
                here = (*keys, str(key))
                if CREDENTIAL_NAME.search(str(key)) and isinstance(value, (str, int, float)):
                    register_secret_value(str(value))
                    warnings.warn(f"{_where(path, text, prefix, here)}: {_table_name(prefix + keys)}{key} holds a key, "
                                  "and tuneproxy never reads keys from a config file: it is ignored (and scrubbed "
                                  f"from all output). Remove it from the file and set {_key_variable(keys)} in the "
                                  "environment instead.", ConfigKeyWarning, stacklevel=4)
                    continue
                kept[key] = walk(value, here)
            return kept
        if isinstance(node, list):
            return [walk(item, keys) for item in node]
        if isinstance(node, str) and redact(node) != node:
            register_secret_value(node)
            where = f"{_where(path, text, prefix, keys)}: {_table_name(prefix + keys[:-1])}{keys[-1]}"
            warnings.warn(f"{where} looks like an API key (scrubbed from all output from now on). Keys do not "
                          f"belong in a config file: set {variable_for(node, keys[:-1])} in the environment instead.",
                          ConfigKeyWarning, stacklevel=4)
        return node

    walked: dict[str, Any] = walk(data, ())
    return walked


# --------------------------------------------------------------------------- the merge


SETTING_KEYS: tuple[str, ...] = ("provider", "model", "budget_usd", "holdout", "holdout_seed", "stratify",
                                 "provider_options", "eval", *PORTABLE_HYPERPARAMETERS)


def from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """The [tune] settings the ``TUNEPROXY_*`` variables of :data:`ENVIRONMENT` set, validated (by Python
    name). An empty variable counts as unset; a bad value is a :class:`ConfigError` naming the variable."""
    values: dict[str, Any] = {}
    for variable, key in ENVIRONMENT.items():
        raw = environ.get(variable, "").strip()
        if not raw:
            continue
        value: Any = _holdout_from_text(raw) if key == "holdout" else raw
        try:
            checked = TuneSection.model_validate({key: value}, by_name=True, by_alias=False)
        except ValidationError as exc:
            message = exc.errors()[0]["msg"].removeprefix("Value error, ")
            raise ConfigError(f"The environment variable {variable}={raw!r} is not valid: {message}. Correct it, "
                              f"or unset it (`unset {variable}`).") from None
        values[key] = getattr(checked, key)
    return values


def _holdout_from_text(text: str) -> float | int | str:
    """A holdout written as text (the environment): a count (100), a fraction (0.1) or a path."""
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number >= 1 and number.is_integer() else number


def split_overrides(overrides: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(settings, rest)``: the keyword arguments that are settings (:data:`SETTING_KEYS`, for
    :func:`resolve`'s ``flags``), and the rest (the Tuner's own: ``poll_interval``, ``api_key``, ...)."""
    settings = {key: value for key, value in overrides.items() if key in SETTING_KEYS}
    rest = {key: value for key, value in overrides.items() if key not in SETTING_KEYS}
    return settings, rest


def resolve(config: Config | None, environ: Mapping[str, str], flags: Mapping[str, Any]) -> Settings:
    """The settings of one run: **flags > environment > config file > defaults**, key by key. Pure: reads
    nothing but its arguments (and the provider registry).

    ``config``: from :func:`load_config` (None: no file). ``environ``: ``os.environ`` (only the variables in
    :data:`ENVIRONMENT` are read). ``flags``: only what the user actually gave, by Python name — a None value
    counts as not given, so a CLI command can pass every option it has:

    ============================  =============================================================
    ``provider``, ``model``       ``--provider`` / ``--model``
    ``budget_usd``                ``--budget``
    ``holdout``                   ``--holdout``, as the CLI parses it (fraction, count or Path)
    ``holdout_seed``, ``stratify``  the split's seed and key
    any portable hyperparameter   ``--epochs``, ``--learning-rate``, ... (``seed`` is the training seed)
    ``provider_options``          ``-o KEY=VALUE`` pairs as a dict (merged over the file's
                                  ``[providers.<provider>]``, key by key)
    ``eval``                      a dict of :class:`EvalSettings` keys (merged over ``[eval]``)
    ============================  =============================================================

    Then ``Tuner(**settings.tuner_arguments())`` and ``tuner.fit(data, **settings.fit_arguments())``.

    A hyperparameter from the *file* that the chosen backend does not take is left out with a
    :class:`NotForThisProviderWarning` — one file serves every backend (Fireworks takes no seed, Replicate no
    suffix). From flags or the environment it is kept, and the Tuner refuses it: that was asked for this run.
    """
    given = {key: value for key, value in flags.items() if value is not None}
    unknown = [key for key in given if key not in SETTING_KEYS]
    if unknown:
        hints = ", ".join(f"{key!r}{_nearest(key, SETTING_KEYS)}" for key in unknown)
        raise ConfigError(f"Unknown setting(s): {hints}. Settings are: {', '.join(SETTING_KEYS)}.")
    from_flags = _checked_flags({k: v for k, v in given.items() if k not in ("provider_options", "eval")})
    from_file = config.tune.model_dump(exclude_none=True) if config else {}
    layers = [("the config file", from_file), ("the environment", from_environment(environ)),
              ("the command line", from_flags)]
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for name, layer in layers:
        for key, value in layer.items():
            merged[key], origin[key] = value, name
    provider = _provider(merged.get("provider"), origin.get("provider"), config)
    options = _options(provider, config, given.get("provider_options"))
    hyperparameters = _hyperparameters(provider, options, merged, origin)
    eval_settings = _eval(config, given.get("eval"))
    holdout = merged.get("holdout")
    return Settings(provider=provider, model=merged.get("model"), hyperparameters=hyperparameters,
                    budget_usd=merged.get("budget_usd"),
                    holdout=Path(holdout) if isinstance(holdout, str) else holdout,
                    holdout_seed=merged.get("holdout_seed", 0), stratify=merged.get("stratify"),
                    provider_options=options, eval=eval_settings, source=config.source if config else None)


def _checked_flags(flags: dict[str, Any]) -> dict[str, Any]:
    try:
        checked = TuneSection.model_validate(flags, by_name=True, by_alias=False)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}"
                             for e in exc.errors())
        raise ConfigError(f"Invalid setting: {problems}.") from None
    return {key: getattr(checked, key) for key in flags}


def _provider(provider: str | None, origin: str | None, config: Config | None) -> str:
    known = registry.names()
    if provider is None:
        where = f"`provider = \"...\"` in [tune] of {config.source}" if config and config.source else (
            "`provider = \"...\"` in [tune] of tuneproxy.toml")
        raise ConfigError(f"No provider chosen: set {where}, TUNEPROXY_PROVIDER, or --provider. Choose one of: "
                          f"{', '.join(known)}.")
    if provider not in known:
        raise ConfigError(f"Unknown provider {provider!r} (from {origin}){_nearest(provider, known)}. Choose one of: "
                          f"{', '.join(known)}.")
    return provider


def _options(provider: str, config: Config | None, flagged: Any) -> dict[str, Any]:
    options = dict(config.providers.get(provider, {})) if config else {}
    if isinstance(flagged, ProviderOptions):
        flagged = flagged.model_dump(exclude_unset=True)
    elif flagged is not None and not isinstance(flagged, Mapping):
        raise ConfigError(f"provider_options is a mapping of option names to values, not {type(flagged).__name__}.")
    options.update(flagged or {})
    return options


def _hyperparameters(provider: str, options: dict[str, Any], merged: dict[str, Any],
                     origin: dict[str, str]) -> dict[str, Any]:
    given = {key: merged[key] for key in PORTABLE_HYPERPARAMETERS if key in merged}
    from_file = [key for key in given if origin[key] == "the config file"]
    if not from_file:
        return given
    backend = registry.provider_class(provider)(options)
    supported = backend.capabilities.parameters
    left_out = sorted(key for key in from_file if key not in supported)
    if left_out:
        warnings.warn(f"{backend.capabilities.display_name} does not take {', '.join(left_out)}: left out of this "
                      "run (set in the config file, which serves every backend; `tuneproxy providers` lists what "
                      "each backend takes).",
                      NotForThisProviderWarning, stacklevel=3)
    return {key: value for key, value in given.items() if key not in left_out}


def _eval(config: Config | None, flagged: Any) -> EvalSettings:
    base = config.eval.model_dump(exclude_none=True) if config else {}
    if isinstance(flagged, EvalSettings):
        flagged = flagged.model_dump(exclude_none=True)
    try:
        return EvalSettings.model_validate({**base, **{k: v for k, v in (flagged or {}).items() if v is not None}})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"Invalid eval setting: {problems}.") from None


def desk_settings(config: Config | None, environ: Mapping[str, str], flags: Mapping[str, Any]
                  ) -> tuple[str | None, dict[str, Any], dict[str, dict[str, Any]]]:
    """What the cost desk (``estimate --all``) takes from the same places, with the same precedence: the model
    (a portable name, or None), the hyperparameters, and every backend's options from ``[providers.*]``
    (``flags["provider_options"]``, a ``{provider: {...}}`` mapping, merged over them). No provider is chosen:
    the desk asks every backend."""
    given = {key: value for key, value in flags.items() if value is not None and key != "provider_options"}
    tune = {**(config.tune.model_dump(exclude_none=True) if config else {}), **from_environment(environ),
            **_checked_flags(given)}
    options = {name: dict(values) for name, values in (config.providers.items() if config else ())}
    for name, values in (flags.get("provider_options") or {}).items():
        options[name] = {**options.get(name, {}), **values}
    hyperparameters = {key: tune[key] for key in PORTABLE_HYPERPARAMETERS if key in tune}
    return tune.get("model"), hyperparameters, options


def eval_settings(config: Config | None, flags: Mapping[str, Any]) -> EvalSettings:
    """The evaluation's settings: ``flags`` (EvalSettings keys; None: not given) over the file's ``[eval]``."""
    return _eval(config, dict(flags))


def load_settings(path: str | Path | None = None, flags: Mapping[str, Any] | None = None,
                  environ: Mapping[str, str] | None = None, start: Path | None = None) -> Settings:
    """:func:`resolve` on the file at ``path`` (a ``--config FILE``), else on the one :func:`find_config`
    finds from ``start`` (default: the current directory), else on no file; ``environ`` defaults to
    ``os.environ``."""
    found = Path(path) if path is not None else find_config(start)
    config = load_config(found) if found is not None else None
    return resolve(config, os.environ if environ is None else environ, flags or {})


# --------------------------------------------------------------------------- the starter file


def _toml_value(value: Any) -> str | None:
    """``value`` as a TOML literal, or None when TOML cannot write it (no value, a path, an object)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "[" + ", ".join(_toml_value(v) or "" for v in value) + "]"
    return None


def _option_lines(provider: str) -> list[str]:
    lines = []
    for name, field in registry.provider_class(provider).Options.model_fields.items():
        default = None if field.is_required() or field.default_factory else _toml_value(field.default)
        description = (field.description or "").rstrip(".")
        lines.append(f"# {name} = {default}  # {description}" if default is not None else f"# {name}: {description}")
    return lines


# What the starter file shows for each hyperparameter (commented out): a typical value.
EXAMPLE_VALUES: dict[str, Any] = {"learning_rate": 0.0001, "learning_rate_multiplier": 1.0, "batch_size": 8,
                                  "lora_rank": 16, "lora_alpha": 32.0, "lora_dropout": 0.05, "max_seq_length": 2048,
                                  "warmup_ratio": 0.03, "seed": 42, "suffix": "my-model"}


def _hyperparameter_lines(taken: Iterable[str]) -> list[str]:
    fields = Hyperparameters.model_fields
    return [f"# {name} = {_toml_value(EXAMPLE_VALUES[name])}  # {(fields[name].description or '').rstrip('.')}"
            for name in PORTABLE_HYPERPARAMETERS if name in taken and name in EXAMPLE_VALUES]


def starter_file(provider: str = "openai") -> str:
    """The commented ``tuneproxy.toml`` that ``tuneproxy init`` writes for ``provider``; it loads as written."""
    cls = registry.provider_class(provider)
    credentials = cls.CAPABILITIES.credentials
    key_line = (f"# Keys never go in this file: set {credentials.env_var} in the environment."
                if credentials else f"# {cls.CAPABILITIES.display_name} needs no key.")
    return "\n".join([
        "# tuneproxy settings (docs/config.md describes every key).",
        "# Precedence: command-line flags > TUNEPROXY_* environment variables > this file > defaults.",
        key_line,
        "",
        "[tune]",
        f'provider = "{provider}"',
        "# model = \"...\"            # a portable name or the backend's id; unset: the backend's default model",
        "epochs = 3",
        "holdout = 0.1              # a fraction or count of the data to hold out, or a JSONL path",
        "# holdout_seed = 0         # seed of the holdout split",
        "# stratify = \"category\"    # metadata key whose values keep their share in the holdout",
        "# budget = 10.0            # refuse a job whose estimate is over this many USD",
        f"# The hyperparameters {cls.CAPABILITIES.display_name} takes (unset: the service's default). Another "
        "backend's are welcome too:",
        "# one this backend does not take is left out with a warning, so one file serves every backend.",
        *_hyperparameter_lines(cls.CAPABILITIES.parameters),
        "",
        f"[providers.{provider}]",
        f"# {cls.CAPABILITIES.display_name}'s own options (`tuneproxy providers` lists them):",
        *_option_lines(provider),
        "",
        "[eval]",
        "# baselines = [\"base\"]     # base, few-shot:K, another job id, URL#MODEL",
        "# scorers = [\"exact\"]      # docs/scorers.md; unset: chosen from the references",
        "# slice_by = \"category\"    # metadata key to compare per value of",
        "# concurrency = 8",
        "# max_tokens = 256",
        "",
    ])


def write_starter(path: str | Path = FILE_NAME, provider: str = "openai", *, force: bool = False) -> Path:
    """Write :func:`starter_file` to ``path`` (a folder gets ``tuneproxy.toml`` in it) and return where.
    An existing file is kept unless ``force``: a :class:`ConfigError` says so."""
    target = Path(path)
    if target.is_dir():
        target = target / FILE_NAME
    text = starter_file(provider)
    try:
        with target.open("w" if force else "x", encoding="utf-8") as handle:
            handle.write(text)
    except FileExistsError:
        raise ConfigError(f"{target} already exists: pass --force to overwrite it, or name another path "
                          "(`tuneproxy init other.toml`).") from None
    except OSError as exc:
        raise ConfigError(f"Cannot write {target} ({exc.strerror or exc}): check that its folder exists and is "
                          "writable.") from None
    return target
