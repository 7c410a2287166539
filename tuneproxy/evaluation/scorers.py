"""Scorers: each turns one system's answer to one item into a :class:`Score`.

A scorer is named by its CLI spec (``exact``, ``regex:^\\d+$``, ``label:category``, ``judge:RUBRIC``) and
that spec is the name its scores carry. Pass/fail scorers (``binary``) feed McNemar's test; graded ones give
a value in [0, 1]. Every scorer is documented with a worked example in ``docs/scorers.md``.

Three kinds of item cannot be scored the same way, and the difference matters to the comparison:
- the answer is missing (the call failed): value None, and ``passed`` False for a pass/fail scorer — the
  system failed the item;
- the reference cannot be read by this scorer (``json_fields`` on a reference that is not a JSON object):
  value None and ``passed`` None — no system can be judged on it;
- an LLM judge's own call failed: value None, ``passed`` None, and the error in ``detail``.
"""

from __future__ import annotations

import asyncio
import difflib
import importlib
import importlib.util
import inspect
import json
import math
import re
import sys
import unicodedata
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar

from tuneproxy.contract import Completion, Endpoint, GenerationParams, run_blocking
from tuneproxy.errors import ConfigError, ProviderError
from tuneproxy.evaluation.model import Answer, Item, Score

T = TypeVar("T")
Grade = tuple[float | None, dict[str, Any]]  # a value in [0, 1] (None: cannot be scored) and its detail

# The scorers chosen for chat data whose references are JSON objects (see :func:`default_scorers`).
DEFAULT_SCORERS: tuple[str, ...] = ("json", "json_fields", "normalized")


# --- text and JSON helpers -------------------------------------------------------------------------------

def _is_punctuation(char: str) -> bool:
    return unicodedata.category(char).startswith("P")


def normalize_text(text: str) -> str:
    """NFKC-normalized, case-folded, whitespace collapsed to single spaces, punctuation (any Unicode ``P*``
    character) and spaces stripped from both ends: ``'  "Straße."\\n'`` → ``'strasse'``."""
    folded = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    start, end = 0, len(folded)
    while start < end and (_is_punctuation(folded[start]) or folded[start].isspace()):
        start += 1
    while end > start and (_is_punctuation(folded[end - 1]) or folded[end - 1].isspace()):
        end -= 1
    return folded[start:end]


class ParsedJSON(NamedTuple):
    ok: bool
    value: Any = None
    error: str = ""


_FENCED = re.compile(r"\A\s*```[\w-]*[ \t]*\n.*\n\s*```\s*\Z", re.DOTALL)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(text: str) -> ParsedJSON:
    """Parse ``text`` as strict JSON (surrounding whitespace allowed; ``NaN``/``Infinity`` and Markdown code
    fences are not). Never raises: a failure is ``ok=False`` with the parser's message."""
    try:
        return ParsedJSON(True, json.loads(text, parse_constant=_reject_constant))
    except ValueError as exc:  # JSONDecodeError is a ValueError
        error = str(exc)
        if _FENCED.match(text):
            error += " (the JSON is wrapped in a Markdown code fence)"
        return ParsedJSON(False, error=error)


def json_equal(a: Any, b: Any) -> bool:
    """Equality of parsed JSON values: key order never matters, ``1 == 1.0`` (JSON has one number type),
    but ``true`` is not ``1`` (as Python's ``==`` would have it)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


_ARTICLES = re.compile(r"\b(?:a|an|the)\b")


def squad_tokens(text: str) -> list[str]:
    """Tokens as the SQuAD evaluation script makes them: lower-cased (here NFKC and case-folded),
    punctuation deleted (here any Unicode punctuation, not only ASCII), the articles a/an/the removed,
    split on whitespace."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    no_punctuation = "".join(char for char in folded if not _is_punctuation(char))
    return _ARTICLES.sub(" ", no_punctuation).split()


_ROUGE_TOKEN = re.compile(r"[^\W_]+")


def rouge_tokens(text: str) -> list[str]:
    """Tokens as ``rouge_score`` makes them without stemming — runs of letters and digits, lower-cased —
    but for any script (``rouge_score`` keeps only ASCII a-z and 0-9)."""
    return _ROUGE_TOKEN.findall(unicodedata.normalize("NFKC", text).casefold())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists (dynamic programming, two rows)."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def _ratio(numerator: float, denominator: float) -> float:
    """A share where 0/0 is 0 (scikit-learn's ``zero_division=0``)."""
    return numerator / denominator if denominator else 0.0


def _f1(precision: float, recall: float) -> float:
    return _ratio(2 * precision * recall, precision + recall)


# --- the contract ------------------------------------------------------------------------------------------

class Scorer(ABC):
    """Turns one answer to one item into a :class:`Score`; named by its CLI spec."""

    name: str
    binary: bool  # pass/fail (feeds McNemar) rather than graded
    description: str

    @abstractmethod
    def score(self, answer: Answer, item: Item) -> Score:
        """The score of ``answer``; an answer with no text gets value None (and fails a pass/fail scorer)."""

    async def ascore_many(self, answers: Sequence[Answer], items: Mapping[str, Item],
                          concurrency: int = 4) -> list[Score]:
        """One score per answer, in order (``items`` by id). Scorers that ask an endpoint run ``concurrency``
        calls at a time; the others need no event loop and score one after another."""
        return [self.score(answer, items[answer.item_id]) for answer in answers]

    def aggregate(self, pairs: Sequence[tuple[Answer, Item]]) -> dict[str, float]:
        """Dataset-level figures that are not a mean of item scores (macro-F1, per-field F1). Default: none."""
        return {}

    def _missing(self, answer: Answer) -> Score:
        return Score(system=answer.system, item_id=answer.item_id, scorer=self.name, value=None,
                     passed=False if self.binary else None, detail={"error": answer.error or "no answer"})

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class TextScorer(Scorer):
    """A scorer that reads the answer's text and the item, and asks nobody."""

    def score(self, answer: Answer, item: Item) -> Score:
        if answer.text is None:
            return self._missing(answer)
        value, detail = self.grade(answer.text, item)
        passed = None if value is None or not self.binary else value == 1.0
        return Score(system=answer.system, item_id=answer.item_id, scorer=self.name, value=value,
                     passed=passed, judged=value is not None, detail=detail)

    @abstractmethod
    def grade(self, text: str, item: Item) -> Grade:
        """The value of ``text`` as an answer to ``item`` (1.0/0.0 for pass/fail scorers), and its detail."""


# --- exact and pattern scorers -----------------------------------------------------------------------------

class Exact(TextScorer):
    name = "exact"
    binary = True
    description = "The answer equals the reference, character for character (surrounding whitespace aside)."

    def grade(self, text: str, item: Item) -> Grade:
        return float(text.strip() == item.reference.strip()), {}


class NormalizedExact(TextScorer):
    name = "normalized"
    binary = True
    description = ("The answer equals the reference after normalizing: parsed JSON values when both are JSON, "
                   "else case-folded text with whitespace collapsed and end punctuation stripped.")

    def grade(self, text: str, item: Item) -> Grade:
        answer, reference = parse_json(text), parse_json(item.reference)
        if answer.ok and reference.ok:
            return float(json_equal(answer.value, reference.value)), {"compared": "json"}
        return float(normalize_text(text) == normalize_text(item.reference)), {"compared": "text"}


class Contains(TextScorer):
    binary = True

    def __init__(self, text: str | None = None) -> None:
        self.needle = text or None
        self.name = f"contains:{text}" if self.needle else "contains"
        self.description = (f"The answer contains {text!r} (case-sensitive)." if self.needle
                            else "The answer contains the reference (case-sensitive, reference stripped).")

    def grade(self, text: str, item: Item) -> Grade:
        needle = self.needle or item.reference.strip()
        if not needle:
            return 0.0, {"error": "nothing to look for: the reference is empty"}
        return float(needle in text), {}


class Regex(TextScorer):
    binary = True

    def __init__(self, pattern: str) -> None:
        if not pattern:
            raise ConfigError("The regex scorer needs a pattern: regex:PATTERN, for example 'regex:^\\d+$'.")
        try:
            self.pattern = re.compile(pattern)
        except re.error as exc:
            raise ConfigError(
                f"regex:{pattern} is not a valid regular expression: {exc.msg} at position {exc.pos}. "
                "Fix the pattern (Python `re` syntax; quote it in a shell: --scorer 'regex:^\\d+$')."
            ) from None
        self.name = f"regex:{pattern}"
        self.description = f"The pattern {pattern!r} is found in the answer (re.search; anchor with ^ and $)."

    def grade(self, text: str, item: Item) -> Grade:
        match = self.pattern.search(text)
        return (1.0, {"match": match.group(0)[:200]}) if match else (0.0, {})


# --- JSON scorers ------------------------------------------------------------------------------------------

def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


class ValidJSON(TextScorer):
    binary = True

    def __init__(self, any_value: bool = False) -> None:
        self.any_value = any_value
        self.name = "json:any" if any_value else "json"
        self.description = ("The answer is valid JSON (any value)." if any_value
                            else "The answer is a valid JSON object or array.")

    def grade(self, text: str, item: Item) -> Grade:
        parsed = parse_json(text)
        if not parsed.ok:
            return 0.0, {"error": parsed.error}
        kind = _json_type(parsed.value)
        if not self.any_value and kind not in ("object", "array"):
            return 0.0, {"error": f"valid JSON, but a {kind}, not an object or array", "type": kind}
        return 1.0, {"type": kind}


def _load_jsonschema() -> Any:
    try:
        return importlib.import_module("jsonschema")
    except ImportError:
        raise ConfigError("The json_schema scorer needs the jsonschema package: install it with "
                          "`pip install jsonschema`.") from None


class JSONSchema(TextScorer):
    binary = True

    def __init__(self, schema: str | Path | Mapping[str, Any]) -> None:
        jsonschema = _load_jsonschema()
        if isinstance(schema, Mapping):
            self.name, document = "json_schema", dict(schema)
        else:
            self.name, document = f"json_schema:{schema}", self._read(Path(schema))
        validator = jsonschema.validators.validator_for(document)
        try:
            validator.check_schema(document)
        except jsonschema.exceptions.SchemaError as exc:
            raise ConfigError(f"{self.name}: the schema itself is invalid: {exc.message}.") from None
        self.validator = validator(document)
        self.description = "The answer is JSON that validates against the schema."

    @staticmethod
    def _read(path: Path) -> Any:
        try:
            document = json.loads(path.expanduser().read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"Cannot read the JSON schema {path}: {exc.strerror or exc}. "
                              "Give the path of a JSON Schema file.") from None
        except ValueError as exc:
            raise ConfigError(f"The JSON schema {path} is not valid JSON: {exc}.") from None
        if not isinstance(document, (dict, bool)):
            raise ConfigError(f"The JSON schema {path} must be a JSON object (or true/false).")
        return document

    def grade(self, text: str, item: Item) -> Grade:
        parsed = parse_json(text)
        if not parsed.ok:
            return 0.0, {"error": parsed.error}
        errors = [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
                  for e in self.validator.iter_errors(parsed.value)]
        return (0.0, {"errors": errors[:5]}) if errors else (1.0, {})


class _FieldOutcome(NamedTuple):
    matched: list[str]
    wrong: list[str]
    missing: list[str]
    extra: list[str]


def _compare_fields(answer: Mapping[str, Any], reference: Mapping[str, Any]) -> _FieldOutcome:
    matched, wrong, missing = [], [], []
    for key, expected in reference.items():
        if key not in answer:
            missing.append(key)
        elif json_equal(answer[key], expected):
            matched.append(key)
        else:
            wrong.append(key)
    return _FieldOutcome(matched, wrong, missing, [key for key in answer if key not in reference])


def _json_object(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    parsed = parse_json(text)
    return parsed.value if parsed.ok and isinstance(parsed.value, dict) else None


class JSONFields(TextScorer):
    name = "json_fields"
    binary = False
    description = ("The share of the reference's top-level fields the answer has with an equal value; the "
                   "aggregate gives precision, recall and F1 per field, micro and macro.")

    def grade(self, text: str, item: Item) -> Grade:
        reference = _json_object(item.reference)
        if reference is None:
            return None, {"error": "the reference is not a JSON object"}
        answer = _json_object(text)
        if answer is None:
            return 0.0, {"error": "the answer is not a JSON object", "missing": list(reference)}
        outcome = _compare_fields(answer, reference)
        value = len(outcome.matched) / len(reference) if reference else 1.0
        return value, outcome._asdict()

    def aggregate(self, pairs: Sequence[tuple[Answer, Item]]) -> dict[str, float]:
        """Per field: a field the answer gets equal is a true positive; a reference field it misses or gets
        wrong is a false negative; a field it gives with a wrong value, or that the reference lacks, is a
        false positive. Micro sums the counts over fields; macro averages F1 over the reference's fields."""
        tp: Counter[str] = Counter()
        fp: Counter[str] = Counter()
        fn: Counter[str] = Counter()
        reference_fields: dict[str, None] = {}  # ordered set
        for answer, item in pairs:
            reference = _json_object(item.reference)
            if reference is None:
                continue
            reference_fields.update(dict.fromkeys(reference))
            outcome = _compare_fields(_json_object(answer.text) or {}, reference)
            tp.update(outcome.matched)
            fn.update(outcome.wrong + outcome.missing)
            fp.update(outcome.wrong + outcome.extra)
        if not reference_fields:
            return {}
        figures: dict[str, float] = {}
        for field in [*reference_fields, *sorted(set(fp) - set(reference_fields))]:
            precision, recall = _ratio(tp[field], tp[field] + fp[field]), _ratio(tp[field], tp[field] + fn[field])
            figures |= {f"precision[{field}]": precision, f"recall[{field}]": recall,
                        f"f1[{field}]": _f1(precision, recall)}
        all_tp, all_fp, all_fn = sum(tp.values()), sum(fp.values()), sum(fn.values())
        micro_p, micro_r = _ratio(all_tp, all_tp + all_fp), _ratio(all_tp, all_tp + all_fn)
        macro_f1 = sum(figures[f"f1[{field}]"] for field in reference_fields) / len(reference_fields)
        return {"micro_precision": micro_p, "micro_recall": micro_r, "micro_f1": _f1(micro_p, micro_r),
                "macro_f1": macro_f1, **figures}


# --- labels ------------------------------------------------------------------------------------------------

class Classification(TextScorer):
    binary = True

    def __init__(self, field: str | None = None) -> None:
        if field == "":
            raise ConfigError("label:FIELD needs the JSON field that holds the label, for example "
                              "'label:category'; for answers that are the label itself use 'classification'.")
        self.field = field
        self.name = f"label:{field}" if field else "classification"
        where = f"the JSON field {field!r}" if field else "the whole answer"
        self.description = (f"The label in {where} equals the reference's (normalized); the aggregate gives "
                            "accuracy and macro-F1 over the reference labels.")

    def label(self, text: str) -> str | None:
        """The label ``text`` holds (normalized), or None when it holds none."""
        if self.field is None:
            return normalize_text(text)
        document = _json_object(text)
        if document is None or self.field not in document:
            return None
        value = document[self.field]
        return normalize_text(value) if isinstance(value, str) else json.dumps(value, sort_keys=True)

    def grade(self, text: str, item: Item) -> Grade:
        expected = self.label(item.reference)
        if expected is None:
            return None, {"error": f"the reference has no JSON field {self.field!r}"}
        got = self.label(text)
        detail: dict[str, Any] = {"label": got, "expected": expected}
        if got is None:
            detail["error"] = f"the answer is not a JSON object with the field {self.field!r}"
        return float(got == expected), detail

    def aggregate(self, pairs: Sequence[tuple[Answer, Item]]) -> dict[str, float]:
        """Accuracy, and precision/recall/F1 per reference label with their unweighted mean (macro-F1) —
        scikit-learn's ``f1_score(y_true, y_pred, labels=sorted(set(y_true)), average="macro",
        zero_division=0)``. A missing or unreadable answer is a wrong prediction."""
        truth: list[str] = []
        predicted: list[str | None] = []
        for answer, item in pairs:
            expected = self.label(item.reference)
            if expected is not None:
                truth.append(expected)
                predicted.append(None if answer.text is None else self.label(answer.text))
        if not truth:
            return {}
        figures: dict[str, float] = {}
        for label in sorted(set(truth)):
            tp = sum(t == label and p == label for t, p in zip(truth, predicted))
            precision = _ratio(tp, sum(p == label for p in predicted))
            recall = _ratio(tp, sum(t == label for t in truth))
            figures |= {f"precision[{label}]": precision, f"recall[{label}]": recall,
                        f"f1[{label}]": _f1(precision, recall)}
        labels = sorted(set(truth))
        return {"accuracy": sum(t == p for t, p in zip(truth, predicted)) / len(truth),
                "macro_f1": sum(figures[f"f1[{label}]"] for label in labels) / len(labels), **figures}


# --- overlap scorers ---------------------------------------------------------------------------------------

class TokenF1(TextScorer):
    name = "token_f1"
    binary = False
    description = "SQuAD's token F1: the harmonic mean of token precision and recall, on normalized tokens."

    def grade(self, text: str, item: Item) -> Grade:
        answer, reference = squad_tokens(text), squad_tokens(item.reference)
        if not answer or not reference:  # SQuAD v2: nothing vs nothing is right, nothing vs something wrong
            return float(answer == reference), {}
        common = sum((Counter(answer) & Counter(reference)).values())
        precision, recall = common / len(answer), common / len(reference)
        return _f1(precision, recall), {"precision": precision, "recall": recall}


class RougeL(TextScorer):
    name = "rouge_l"
    binary = False
    description = "ROUGE-L F-measure: the longest common subsequence of tokens, as precision and recall."

    def grade(self, text: str, item: Item) -> Grade:
        answer, reference = rouge_tokens(text), rouge_tokens(item.reference)
        if not answer or not reference:  # rouge_score gives 0 even when both are empty; identical is 1
            return float(answer == reference), {}
        lcs = lcs_length(answer, reference)
        precision, recall = lcs / len(answer), lcs / len(reference)
        return _f1(precision, recall), {"precision": precision, "recall": recall, "lcs": lcs}


# --- a user's function -------------------------------------------------------------------------------------

def _import_module(location: str, spec: str) -> Any:
    """The module ``location`` names: a dotted module path, or a ``.py`` file."""
    try:
        if not location.endswith(".py"):
            return importlib.import_module(location)
        path = Path(location).expanduser()
        if not path.is_file():
            raise ConfigError(f"{spec}: there is no file {path}. Give an importable module or a .py file.")
        module_name = f"tuneproxy_user_scorer_{path.stem}"
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise ConfigError(f"{spec}: {path} cannot be loaded as a Python module.")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[module_name] = module  # dataclasses and pickling look a module up by name
        loader_spec.loader.exec_module(module)
        return module
    except ConfigError:
        raise
    except ModuleNotFoundError as exc:
        raise ConfigError(f"{spec}: cannot import {location!r} ({exc}). Give a module importable from "
                          "PYTHONPATH (python:package.module:function) or a file (python:path/to/file.py:"
                          "function).") from None
    except Exception as exc:
        raise ConfigError(f"{spec}: importing {location!r} failed: {type(exc).__name__}: {exc}.") from None


class PythonScorer(TextScorer):
    """A user's function ``(answer_text, item) -> float | bool``. Annotated ``-> bool``, it is a pass/fail
    scorer; otherwise graded (a returned bool counts as 1.0/0.0)."""

    def __init__(self, target: str) -> None:
        self.name = f"python:{target}"
        location, _, attribute = target.rpartition(":")
        if not location or not attribute:
            raise ConfigError(f"{self.name}: write python:MODULE:FUNCTION (for example python:checks:is_valid "
                              "or python:path/to/checks.py:is_valid).")
        module = _import_module(location, self.name)
        function = getattr(module, attribute, None)
        if function is None:
            names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
            near = difflib.get_close_matches(attribute, names, n=1)
            raise ConfigError(f"{self.name}: {location} has no {attribute!r}"
                              + (f" (did you mean {near[0]!r}?)." if near else "."))
        if not callable(function):
            raise ConfigError(f"{self.name}: {attribute} is a {type(function).__name__}, not a function.")
        try:
            signature = inspect.signature(function)
            signature.bind("answer text", None)
        except TypeError:
            raise ConfigError(f"{self.name}: the function must take two arguments, (answer_text, item).") from None
        except ValueError:  # a builtin without a signature: trust it
            signature = None
        self.function: Callable[[str, Item], Any] = function
        self.binary = signature is not None and signature.return_annotation in (bool, "bool")
        self.description = (function.__doc__ or f"{target}(answer_text, item)").strip().splitlines()[0]

    def grade(self, text: str, item: Item) -> Grade:
        try:
            result = self.function(text, item)
        except Exception as exc:
            raise ConfigError(f"{self.name} raised {type(exc).__name__} on item {item.id}: {exc}. Fix the "
                              "function, or have it return 0 for answers it cannot read.") from exc
        if isinstance(result, bool):
            return float(result), {}
        valid = isinstance(result, (int, float)) and not math.isnan(result) and 0 <= result <= 1
        if not valid or (self.binary and result not in (0, 1)):
            wanted = "True or False" if self.binary else "a number in [0, 1] or a bool"
            raise ConfigError(f"{self.name} returned {result!r} on item {item.id}; it must return {wanted}.")
        return float(result), {}


# --- LLM judges --------------------------------------------------------------------------------------------

def _transcript(messages: Sequence[Mapping[str, Any]]) -> str:
    lines = []
    for message in messages:
        content = message.get("content")
        lines.append(f"{message.get('role', 'user')}: "
                     f"{content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)}")
    return "\n".join(lines)


def _item_sections(item: Item) -> str:
    reference = (f"\n\n## Reference answer (what a good answer looks like)\n{item.reference}"
                 if item.reference.strip() else "")
    return f"## Conversation\n{_transcript(item.messages)}{reference}"


def _json_in(reply: str) -> dict[str, Any] | None:
    """The JSON object in a judge's reply, wherever it sits (after prose, inside a code fence)."""
    start, end = reply.find("{"), reply.rfind("}")
    if start == -1 or end <= start:
        return None
    parsed = parse_json(reply[start:end + 1])
    return parsed.value if parsed.ok and isinstance(parsed.value, dict) else None


_NUMBER = r"(\d+(?:\.\d+)?)"
_SCORE_PATTERNS = (
    re.compile(r"(?i:\b(?:score|rating|grade)\b)[^0-9A-Za-z\n]{0,6}(?i:(?:of|is)\s+)?" + _NUMBER),
    re.compile(_NUMBER + r"\s*(?:/|out of)\s*5\b"),
    re.compile(r"\A\W*" + _NUMBER + r"\W*\Z"),
)


def parse_rubric_reply(reply: str) -> tuple[float, str] | None:
    """The 1–5 score and the reason in a judge's reply: a JSON object ``{"score": 4, "reason": ...}``
    anywhere in it, else ``Score: 4``, ``4/5`` or a bare number. None when there is no score in 1–5."""
    document = _json_in(reply)
    candidates: list[Any] = [document.get("score")] if document else []
    candidates += [m.group(1) for pattern in _SCORE_PATTERNS for m in [pattern.search(reply)] if m]
    for candidate in candidates:
        try:
            score = float(candidate)
        except (TypeError, ValueError):
            continue
        if 1 <= score <= 5:
            reason = document.get("reason") if document else None
            if not isinstance(reason, str):
                found = re.search(r"(?i)\breason\b\W{0,4}(.+)", reply)
                reason = found.group(1).strip() if found else reply.strip()
            return score, reason[:500]
    return None


Choice = Literal["A", "B", "tie"]
_CHOICE_WORDS: dict[str, Choice] = {"a": "A", "answer a": "A", "b": "B", "answer b": "B", "tie": "tie",
                                    "a tie": "tie", "draw": "tie", "a draw": "tie", "equal": "tie",
                                    "both": "tie", "neither": "tie"}
# The letters are matched in capitals only, so the article in "the winner is a tie" is not answer A.
_WINNER = re.compile(r"(?i:\bwinner\b)[^0-9A-Za-z\n]{0,6}(?i:is\s+)?(?i:answer\s+)?(A|B|(?i:(?:a\s+)?(?:tie|draw)))\b")


def parse_pairwise_reply(reply: str) -> tuple[Choice, str] | None:
    """Which answer a judge preferred — ``A``, ``B`` or ``tie`` — and why: from ``{"winner": "A"}``
    anywhere in the reply, else ``Winner: B``, else a reply that is only the choice. None when unreadable."""
    document = _json_in(reply)
    choice: Choice | None = None
    if document and isinstance(document.get("winner"), str):
        choice = _CHOICE_WORDS.get(normalize_text(document["winner"]))
    if choice is None:
        found = _WINNER.search(reply)
        choice = _CHOICE_WORDS.get(normalize_text(found.group(1) if found else reply))
    if choice is None:
        return None
    reason = document.get("reason") if document else None
    return choice, (reason if isinstance(reason, str) else reply.strip())[:500]


class _Judge:
    """What both judges share: one endpoint asked at temperature 0, a failed call recorded, not raised."""

    def __init__(self, endpoint: Endpoint, params: GenerationParams | None) -> None:
        self.endpoint = endpoint
        self.params = params or GenerationParams.model_validate({"temperature": 0.0, "max_tokens": 300})

    async def _ask(self, system: str, user: str) -> tuple[str | None, dict[str, Any]]:
        """The judge's reply and the call's usage, or None and the error."""
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        try:
            completion: Completion = await self.endpoint.acomplete(messages, self.params)
        except ProviderError as exc:
            return None, {"error": str(exc)}
        return completion.text, {"prompt_tokens": completion.usage.prompt_tokens,
                                 "completion_tokens": completion.usage.completion_tokens,
                                 "cost_usd": completion.cost_usd}

    def _blocking(self, work: Coroutine[Any, Any, T]) -> T:
        async def closing() -> T:
            try:
                return await work
            finally:
                await self.endpoint.aclose()

        return run_blocking(closing())


async def _gather_limited(works: Sequence[Coroutine[Any, Any, T]], concurrency: int) -> list[T]:
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(work: Coroutine[Any, Any, T]) -> T:
        async with gate:
            return await work

    return list(await asyncio.gather(*(one(w) for w in works)))


RUBRIC_SYSTEM = (
    "You are a strict, fair grader. You read a conversation, the answer a model gave to it, and a rubric, and "
    "grade the answer against the rubric from 1 (fails it completely) to 5 (fully meets it). Reply with only "
    'a JSON object: {"score": <integer 1-5>, "reason": "<one short sentence>"}.'
)


class RubricJudge(_Judge, Scorer):
    """An LLM grades each answer 1–5 against a rubric; value = (score − 1) / 4."""

    binary = False

    def __init__(self, endpoint: Endpoint, rubric: str, *, name: str | None = None,
                 params: GenerationParams | None = None) -> None:
        if not rubric.strip():
            raise ConfigError("The judge needs a rubric: judge:RUBRIC, for example 'judge:Is the answer polite "
                              "and does it answer the question?'.")
        super().__init__(endpoint, params)
        self.rubric = rubric
        self.name = name or f"judge:{rubric}"
        self.description = f"An LLM judge ({endpoint.model}) grades 1-5 against: {rubric}"

    def prompt(self, text: str, item: Item) -> str:
        return f"{_item_sections(item)}\n\n## Answer to grade\n{text}\n\n## Rubric\n{self.rubric}"

    async def ascore(self, answer: Answer, item: Item) -> Score:
        """One answer graded; a failed call or an unreadable reply is value None with the reason in detail."""
        if answer.text is None:
            return self._missing(answer)
        reply, detail = await self._ask(RUBRIC_SYSTEM, self.prompt(answer.text, item))
        value = None
        if reply is not None:
            verdict = parse_rubric_reply(reply)
            if verdict is None:
                detail |= {"error": "the judge's reply has no score from 1 to 5", "reply": reply[:500]}
            else:
                value = (verdict[0] - 1) / 4
                detail |= {"score": verdict[0], "reason": verdict[1]}
        return Score(system=answer.system, item_id=answer.item_id, scorer=self.name, value=value, passed=None,
                     judged=value is not None, detail=detail)

    async def ascore_many(self, answers: Sequence[Answer], items: Mapping[str, Item],
                          concurrency: int = 4) -> list[Score]:
        return await _gather_limited([self.ascore(a, items[a.item_id]) for a in answers], concurrency)

    def score(self, answer: Answer, item: Item) -> Score:
        return self._blocking(self.ascore(answer, item))


PAIRWISE_SYSTEM = (
    "You compare two answers to the same conversation and decide which better meets the criteria. Judge the "
    "content, not the length or the order in which the answers are shown. Reply with only a JSON object: "
    '{"winner": "A" | "B" | "tie", "reason": "<one short sentence>"}.'
)
Winner = Literal["candidate", "baseline", "tie"]
WINNER_VALUE: dict[Winner, float] = {"candidate": 1.0, "tie": 0.5, "baseline": 0.0}


class PairwiseJudge(_Judge):
    """An LLM compares the candidate's answer with a baseline's, twice with the positions swapped. The
    candidate (or the baseline) wins only when both orders agree; any disagreement is a tie, so a judge that
    always prefers the first position produces ties, not wins. Value: 1 candidate wins, 0.5 tie, 0 loses.

    Not a :class:`Scorer`: it scores a pair of answers, not one."""

    def __init__(self, endpoint: Endpoint, criteria: str, *, name: str | None = None,
                 params: GenerationParams | None = None) -> None:
        if not criteria.strip():
            raise ConfigError("The pairwise judge needs criteria, for example 'Which answer is more accurate?'.")
        super().__init__(endpoint, params)
        self.criteria = criteria
        self.name = name or f"pairwise:{criteria}"
        self.description = f"An LLM judge ({endpoint.model}) picks the better answer, both orders, by: {criteria}"

    def prompt(self, item: Item, first: str, second: str) -> str:
        return (f"{_item_sections(item)}\n\n## Answer A\n{first}\n\n## Answer B\n{second}\n\n"
                f"## Criteria\n{self.criteria}")

    async def _verdict(self, item: Item, first: str, second: str, first_is: Winner) -> dict[str, Any]:
        reply, detail = await self._ask(PAIRWISE_SYSTEM, self.prompt(item, first, second))
        detail["order"] = f"{first_is} as A"
        if reply is None:
            return detail
        parsed = parse_pairwise_reply(reply)
        if parsed is None:
            return detail | {"error": "the judge's reply names no winner (A, B or tie)", "reply": reply[:500]}
        other: Winner = "baseline" if first_is == "candidate" else "candidate"
        winner: Winner = {"A": first_is, "B": other, "tie": "tie"}[parsed[0]]
        return detail | {"choice": parsed[0], "winner": winner, "reason": parsed[1]}

    async def acompare(self, item: Item, candidate: Answer, baseline: Answer) -> Score:
        """The candidate's answer against the baseline's on ``item``; the Score is the candidate's, its detail
        holds both verdicts. Value None (no call made) when either answer is missing, or when a call failed
        or a reply could not be read."""
        detail: dict[str, Any] = {"baseline": baseline.system}
        value = None
        if candidate.text is None or baseline.text is None:
            detail["error"] = f"the {'candidate' if candidate.text is None else 'baseline'} has no answer"
        else:
            verdicts = await asyncio.gather(self._verdict(item, candidate.text, baseline.text, "candidate"),
                                            self._verdict(item, baseline.text, candidate.text, "baseline"))
            detail["verdicts"] = list(verdicts)
            errors = [v["error"] for v in verdicts if "error" in v]
            if errors:
                detail["error"] = "; ".join(errors)
            else:
                winners = {v["winner"] for v in verdicts}
                winner: Winner = winners.pop() if len(winners) == 1 else "tie"
                detail["winner"] = winner
                value = WINNER_VALUE[winner]
        return Score(system=candidate.system, item_id=item.id, scorer=self.name, value=value, passed=None,
                     detail=detail)

    async def acompare_many(self, items: Mapping[str, Item], candidates: Sequence[Answer],
                            baselines: Sequence[Answer], concurrency: int = 4) -> list[Score]:
        """One Score per candidate answer, matched to the baseline's answer to the same item (value None
        when the baseline has none)."""
        by_item = {answer.item_id: answer for answer in baselines}
        baseline_name = baselines[0].system if baselines else "baseline"
        works = []
        for candidate in candidates:
            baseline = by_item.get(candidate.item_id) or Answer.model_validate(
                {"system": baseline_name, "item_id": candidate.item_id, "error": "no baseline answer"})
            works.append(self.acompare(items[candidate.item_id], candidate, baseline))
        return await _gather_limited(works, concurrency)

    def compare(self, item: Item, candidate: Answer, baseline: Answer) -> Score:
        """Blocking twin of :meth:`acompare`."""
        return self._blocking(self.acompare(item, candidate, baseline))


# --- building scorers from names ---------------------------------------------------------------------------

Builder = Callable[[str | None, Endpoint | None], Scorer]


def _judge(rubric: str | None, endpoint: Endpoint | None) -> Scorer:
    if endpoint is None:
        raise ConfigError("The judge scorer needs a judge endpoint to ask, and none was given (in Python: "
                          "scorer_from_spec(spec, judge=endpoint)).")
    return RubricJudge(endpoint, rubric or "")


def _json(argument: str | None, endpoint: Endpoint | None) -> Scorer:
    if argument not in (None, "any"):
        raise ConfigError(f"json takes no argument but 'any' (got {argument!r}): 'json' is an object or array, "
                          "'json:any' any JSON value.")
    return ValidJSON(any_value=argument == "any")


# usage → (whether it takes an argument, how to build it)
_SCORERS: dict[str, tuple[Literal["none", "optional", "required"], Builder]] = {
    "exact": ("none", lambda a, e: Exact()),
    "normalized": ("none", lambda a, e: NormalizedExact()),
    "contains": ("optional", lambda a, e: Contains(a)),
    "regex": ("required", lambda a, e: Regex(a or "")),
    "json": ("optional", _json),
    "json_schema": ("required", lambda a, e: JSONSchema(a or "")),
    "json_fields": ("none", lambda a, e: JSONFields()),
    "classification": ("none", lambda a, e: Classification()),
    "label": ("required", lambda a, e: Classification(a or "")),
    "token_f1": ("none", lambda a, e: TokenF1()),
    "rouge_l": ("none", lambda a, e: RougeL()),
    "python": ("required", lambda a, e: PythonScorer(a or "")),
    "judge": ("required", _judge),
}
_ARGUMENT_NAMES = {"contains": "TEXT", "regex": "PATTERN", "json": "any", "json_schema": "PATH",
                   "label": "FIELD", "python": "MODULE:FUNCTION", "judge": "RUBRIC"}
KNOWN_SCORERS: tuple[str, ...] = tuple(
    name if kind == "none" else f"{name}[:{_ARGUMENT_NAMES[name]}]" if kind == "optional"
    else f"{name}:{_ARGUMENT_NAMES[name]}"
    for name, (kind, _) in _SCORERS.items()
)


def scorer_from_spec(spec: str, *, judge: Endpoint | None = None) -> Scorer:
    """The scorer a CLI spec names: ``NAME`` or ``NAME:ARGUMENT`` (see :data:`KNOWN_SCORERS`). ``judge`` is
    the endpoint a ``judge:RUBRIC`` scorer asks."""
    raw_name, colon, argument = spec.partition(":")
    name = raw_name.strip().lower().replace("-", "_")
    if name == "pairwise":
        raise ConfigError("pairwise compares two systems' answers, so it is not a per-answer scorer: use "
                          "PairwiseJudge(endpoint, criteria).acompare_many(...) in the comparison.")
    if name not in _SCORERS:
        near = difflib.get_close_matches(name, list(_SCORERS), n=1, cutoff=0.5)
        raise ConfigError(f"Unknown scorer {raw_name.strip()!r}" + (f" (did you mean {near[0]!r}?)" if near else "")
                          + f". Known scorers: {', '.join(KNOWN_SCORERS)}.")
    kind, build = _SCORERS[name]
    if name != "regex":  # a pattern's spaces are part of it
        argument = argument.strip()
    given = argument if colon and argument else None
    usage = KNOWN_SCORERS[list(_SCORERS).index(name)]
    if kind == "none" and given is not None:
        raise ConfigError(f"The {name} scorer takes no argument (got {given!r}): write '{name}'.")
    if kind == "required" and given is None:
        raise ConfigError(f"The {name} scorer needs an argument: write '{usage}'.")
    return build(given, judge)


_LABEL_MAX_WORDS = 4
_LABEL_MAX_DISTINCT = 20


def _looks_like_labels(references: Sequence[str]) -> bool:
    """Short one-line references drawn from a small set that repeats: at most 4 words each, at most 20
    distinct values, and at most half as many distinct values as references."""
    normalized = [normalize_text(r) for r in references]
    short = all(label and "\n" not in raw.strip() and len(label.split()) <= _LABEL_MAX_WORDS
                for raw, label in zip(references, normalized))
    return short and len(set(normalized)) <= min(_LABEL_MAX_DISTINCT, len(references) / 2)


def default_scorer_specs(items: Sequence[Item]) -> list[str]:
    """The scorers an evaluation uses when none are named, chosen by looking at the references:
    every reference a JSON object → :data:`DEFAULT_SCORERS` (json, json_fields, normalized); every one a
    JSON object or array → json, normalized; short repeated labels → classification; otherwise free text →
    token_f1, rouge_l. No items → :data:`DEFAULT_SCORERS`."""
    parsed = [parse_json(item.reference) for item in items]
    if all(p.ok and isinstance(p.value, dict) for p in parsed):
        return list(DEFAULT_SCORERS)
    if all(p.ok and isinstance(p.value, (dict, list)) for p in parsed):
        return ["json", "normalized"]
    if _looks_like_labels([item.reference for item in items]):
        return ["classification"]
    return ["token_f1", "rouge_l"]


def default_scorers(items: Sequence[Item]) -> list[Scorer]:
    """:func:`default_scorer_specs` built into scorers."""
    return [scorer_from_spec(spec) for spec in default_scorer_specs(items)]
