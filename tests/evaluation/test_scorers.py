"""Scorers against hand-computed values (the arithmetic is in the comments), against reference
implementations where one is installed (rouge_score, jsonschema), and the LLM judges through a scripted
Endpoint."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from tuneproxy.contract import Completion, Endpoint, GenerationParams, Usage
from tuneproxy.errors import ConfigError, ProviderError
from tuneproxy.evaluation.model import Answer, Item
from tuneproxy.evaluation.scorers import (
    DEFAULT_SCORERS,
    KNOWN_SCORERS,
    Classification,
    JSONFields,
    PairwiseJudge,
    RubricJudge,
    default_scorer_specs,
    default_scorers,
    parse_pairwise_reply,
    parse_rubric_reply,
    scorer_from_spec,
)


def item(reference: str, item_id: str = "i1", question: str = "What is it?") -> Item:
    return Item(id=item_id, messages=[{"role": "user", "content": question}], reference=reference)


def answer(text: str | None, item_id: str = "i1", system: str = "tuned", error: str | None = None) -> Answer:
    return Answer(system=system, item_id=item_id, text=text, error=error)


def value(spec: str, text: str | None, reference: str) -> float | None:
    return scorer_from_spec(spec).score(answer(text), item(reference)).value


# --- exact, normalized, contains, regex ----------------------------------------------------------------------

def test_exact_ignores_only_surrounding_whitespace():
    assert value("exact", "Paris\n", "Paris") == 1.0
    assert value("exact", "paris", "Paris") == 0.0
    assert value("exact", "Par  is", "Par is") == 0.0


def test_exact_passes_an_empty_answer_to_an_empty_reference():
    score = scorer_from_spec("exact").score(answer(""), item(""))
    assert (score.value, score.passed) == (1.0, True)


def test_normalized_folds_case_whitespace_and_end_punctuation():
    assert value("normalized", "  Hello,   WORLD!\n", "hello, world") == 1.0
    assert value("normalized", "hello world", "hello, world") == 0.0  # inner punctuation is kept


def test_normalized_folds_unicode_compatibility_forms_and_case():
    assert value("normalized", "STRASSE", "Straße") == 1.0  # casefold: ß → ss
    assert value("normalized", "ＡＢＣ", "abc") == 1.0  # NFKC: full-width letters
    assert value("normalized", "Café", "cafe") == 0.0  # accents are not removed


def test_normalized_compares_json_answers_as_parsed_values():
    score = scorer_from_spec("normalized").score(answer('{"b": [1, 2], "a": 1.0}'), item('{"a":1,"b":[1,2]}'))
    assert (score.value, score.detail["compared"]) == (1.0, "json")


def test_normalized_json_keeps_booleans_apart_from_numbers():
    assert value("normalized", '{"ok": 1}', '{"ok": true}') == 0.0


def test_contains_looks_for_its_text_case_sensitively():
    assert value("contains:refund", "We issued a refund.", "") == 1.0
    assert value("contains:refund", "Refund issued.", "") == 0.0


def test_contains_without_text_looks_for_the_reference():
    assert value("contains", "The answer is 42, I think.", "42\n") == 1.0


def test_contains_an_empty_reference_fails_and_says_why():
    score = scorer_from_spec("contains").score(answer("anything"), item("  "))
    assert score.value == 0.0 and "empty" in score.detail["error"]


def test_regex_searches_anywhere_unless_anchored():
    assert value(r"regex:\d+", "order 42 shipped", "") == 1.0
    assert value(r"regex:^\d+$", "12345", "") == 1.0
    assert value(r"regex:^\d+$", "123a", "") == 0.0


def test_regex_keeps_spaces_in_the_pattern():
    assert scorer_from_spec("regex: a").score(answer("xa"), item("")).value == 0.0


def test_a_bad_regex_is_a_config_error_naming_the_problem():
    with pytest.raises(ConfigError, match=r"not a valid regular expression: missing \), unterminated "
                                          r"subpattern at position 0"):
        scorer_from_spec("regex:(")


# --- JSON ------------------------------------------------------------------------------------------------------

def test_json_passes_objects_and_arrays():
    assert value("json", ' {"a": 1}\n', "") == 1.0
    assert value("json", "[1, 2]", "") == 1.0


def test_json_fails_a_bare_value_that_json_any_accepts():
    score = scorer_from_spec("json").score(answer('"hello"'), item(""))
    assert score.value == 0.0 and score.detail["type"] == "string"
    assert value("json:any", '"hello"', "") == 1.0


def test_json_rejects_nan_which_python_would_parse():
    assert value("json:any", "NaN", "") == 0.0


def test_json_in_a_code_fence_fails_with_a_hint():
    score = scorer_from_spec("json").score(answer('```json\n{"a": 1}\n```'), item(""))
    assert score.passed is False and "Markdown code fence" in score.detail["error"]


def test_json_schema_without_jsonschema_installed_says_to_install_it(tmp_path, monkeypatch):
    schema = tmp_path / "schema.json"
    schema.write_text('{"type": "object"}')
    monkeypatch.setitem(sys.modules, "jsonschema", None)  # makes `import jsonschema` fail
    with pytest.raises(ConfigError, match="pip install jsonschema"):
        scorer_from_spec(f"json_schema:{schema}")


SCHEMA = {"type": "object", "required": ["category"],
          "properties": {"category": {"enum": ["billing", "security"]}, "priority": {"type": "integer"}}}


@pytest.fixture
def schema_file(tmp_path):
    pytest.importorskip("jsonschema")
    path = tmp_path / "ticket.schema.json"
    path.write_text(json.dumps(SCHEMA))
    return path


def test_json_schema_passes_an_answer_that_validates(schema_file):
    scorer = scorer_from_spec(f"json_schema:{schema_file}")
    assert scorer.name == f"json_schema:{schema_file}"
    assert scorer.score(answer('{"category": "billing", "priority": 2}'), item("")).passed is True


def test_json_schema_fails_an_answer_and_names_where(schema_file):
    score = scorer_from_spec(f"json_schema:{schema_file}").score(
        answer('{"category": "sales", "priority": "high"}'), item(""))
    assert score.passed is False
    assert sorted(score.detail["errors"]) == ["category: 'sales' is not one of ['billing', 'security']",
                                              "priority: 'high' is not of type 'integer'"]


def test_json_schema_fails_an_answer_that_is_not_json(schema_file):
    score = scorer_from_spec(f"json_schema:{schema_file}").score(answer("category: billing"), item(""))
    assert score.passed is False and "Expecting value" in score.detail["error"]


def test_json_schema_missing_file_is_a_config_error(tmp_path):
    pytest.importorskip("jsonschema")
    with pytest.raises(ConfigError, match="Cannot read the JSON schema"):
        scorer_from_spec(f"json_schema:{tmp_path / 'nope.json'}")


def test_json_schema_that_is_itself_invalid_is_a_config_error(tmp_path):
    pytest.importorskip("jsonschema")
    path = tmp_path / "bad.json"
    path.write_text('{"type": "objekt"}')
    with pytest.raises(ConfigError, match="the schema itself is invalid"):
        scorer_from_spec(f"json_schema:{path}")


def test_json_fields_is_the_share_of_reference_fields_the_answer_gets_equal():
    # reference fields name, age, city; the answer gets name and age (key order differs), city is wrong:
    # 2 / 3
    score = scorer_from_spec("json_fields").score(
        answer('{"age": 36, "name": "Ada", "city": "Paris", "x": 1}'),
        item('{"name": "Ada", "age": 36, "city": "London"}'))
    assert score.value == pytest.approx(2 / 3)
    assert score.detail == {"matched": ["name", "age"], "wrong": ["city"], "missing": [], "extra": ["x"]}


def test_json_fields_gives_zero_to_an_answer_that_is_not_a_json_object():
    assert value("json_fields", "[1]", '{"a": 1}') == 0.0


def test_json_fields_cannot_score_a_reference_that_is_not_an_object():
    score = scorer_from_spec("json_fields").score(answer('{"a": 1}'), item("plain text"))
    assert (score.value, score.passed) == (None, None)


def test_json_fields_aggregate_matches_the_hand_computation():
    pairs = [
        # matched name, age; city wrong
        (answer('{"age": 36, "name": "Ada", "city": "Paris"}', "1"),
         item('{"name": "Ada", "age": 36, "city": "London"}', "1")),
        # matched name; age wrong ("41" is a string); city missing; country extra
        (answer('{"name": "Alan", "age": "41", "country": "UK"}', "2"),
         item('{"name": "Alan", "age": 41, "city": "Wilmslow"}', "2")),
        # no answer: every reference field is a false negative
        (answer(None, "3", error="timeout"), item('{"name": "Grace", "age": 85, "city": "Arlington"}', "3")),
        # a reference that is not an object is left out
        (answer('{"name": "x"}', "4"), item("not json", "4")),
    ]
    figures = JSONFields().aggregate(pairs)
    # name:    TP 2, FP 0, FN 1 → P 1,   R 2/3, F1 2·(2/3)/(5/3) = 4/5
    # age:     TP 1, FP 1, FN 2 → P 1/2, R 1/3, F1 2·(1/6)/(5/6) = 2/5
    # city:    TP 0, FP 1, FN 3 → P 0,   R 0,   F1 0
    # country: TP 0, FP 1, FN 0 → P 0,   R 0 (0/0), F1 0 — not in the macro average (not a reference field)
    # micro:   TP 3, FP 3, FN 6 → P 1/2, R 1/3, F1 2/5;  macro F1 (4/5 + 2/5 + 0) / 3 = 2/5
    expected = {
        "precision[name]": 1.0, "recall[name]": 2 / 3, "f1[name]": 4 / 5,
        "precision[age]": 1 / 2, "recall[age]": 1 / 3, "f1[age]": 2 / 5,
        "precision[city]": 0.0, "recall[city]": 0.0, "f1[city]": 0.0,
        "precision[country]": 0.0, "recall[country]": 0.0, "f1[country]": 0.0,
        "micro_precision": 1 / 2, "micro_recall": 1 / 3, "micro_f1": 2 / 5, "macro_f1": 2 / 5,
    }
    assert figures == pytest.approx(expected)


# --- labels ----------------------------------------------------------------------------------------------------

def test_classification_compares_normalized_whole_answers():
    assert value("classification", "Positive.\n", "positive") == 1.0
    assert value("classification", "positive sentiment", "positive") == 0.0


def test_label_field_compares_one_json_field():
    score = scorer_from_spec("label:category").score(
        answer('{"priority": "high", "category": "Billing "}'), item('{"category": "billing", "priority": "low"}'))
    assert (score.passed, score.detail["label"], score.detail["expected"]) == (True, "billing", "billing")


def test_label_field_fails_an_answer_without_the_field():
    score = scorer_from_spec("label:category").score(answer("billing"), item('{"category": "billing"}'))
    assert score.passed is False and "field 'category'" in score.detail["error"]


def test_label_field_cannot_score_a_reference_without_the_field():
    score = scorer_from_spec("label:category").score(answer('{"category": "x"}'), item('{"kind": "x"}'))
    assert (score.value, score.passed) == (None, None)


def classification_pairs(predictions: Sequence[str | None], truth: Sequence[str]) -> list[tuple[Answer, Item]]:
    return [(answer(p, str(i)), item(t, str(i))) for i, (p, t) in enumerate(zip(predictions, truth))]


def test_macro_f1_on_an_unbalanced_label_set_matches_the_hand_computation():
    truth = ["a"] * 6 + ["b"] * 2 + ["c"]
    predicted = ["a", "a", "a", "a", "a", "b", "b", "a", "a"]
    figures = Classification().aggregate(classification_pairs(predicted, truth))
    # a: TP 5, predicted 7, true 6 → P 5/7, R 5/6, F1 2·(25/42)/(65/42) = 10/13
    # b: TP 1, predicted 2, true 2 → P 1/2, R 1/2, F1 1/2
    # c: TP 0                      → F1 0
    # macro F1 (10/13 + 1/2 + 0) / 3 = 11/26; accuracy 6/9 (while the majority class alone scores 6/9 too)
    assert figures["macro_f1"] == pytest.approx(11 / 26)
    assert figures["accuracy"] == pytest.approx(6 / 9)
    assert (figures["precision[a]"], figures["recall[a]"]) == pytest.approx((5 / 7, 5 / 6))
    assert figures["f1[c]"] == 0.0


def test_macro_f1_counts_a_missing_answer_as_wrong_and_invents_no_class():
    truth = ["a", "a", "b", "b"]
    figures = Classification().aggregate(classification_pairs(["a", None, "b", "zzz"], truth))
    # a: TP 1, predicted 1, true 2 → P 1, R 1/2, F1 2/3;  b: TP 1, predicted 1, true 2 → F1 2/3
    # "zzz" is no class of its own: macro F1 (2/3 + 2/3) / 2 = 2/3;  accuracy 2/4
    assert figures["macro_f1"] == pytest.approx(2 / 3)
    assert figures["accuracy"] == 0.5
    assert "f1[zzz]" not in figures


def test_label_aggregate_reads_labels_from_the_field():
    pairs = [(answer('{"category": "x"}', "1"), item('{"category": "x"}', "1")),
             (answer("not json", "2"), item('{"category": "y"}', "2"))]
    assert Classification("category").aggregate(pairs)["accuracy"] == 0.5


# --- token F1 and ROUGE-L -------------------------------------------------------------------------------------

def test_token_f1_matches_the_squad_definition():
    # tokens (articles and punctuation dropped): answer [cat, sat, on, mat], reference [cat, sat, on, red, mat]
    # common 4 → P 4/4, R 4/5, F1 2·(4/5)/(9/5) = 8/9
    assert value("token_f1", "The cat sat on the mat.", "A cat sat on a red mat") == pytest.approx(8 / 9)


def test_token_f1_counts_repeated_tokens_once_per_match():
    # answer [yes, yes, no], reference [yes, no, no, maybe]: common min(2,1) + min(1,2) = 2
    # P 2/3, R 2/4, F1 2·(1/3)/(7/6) = 4/7
    assert value("token_f1", "yes yes no", "yes no no maybe") == pytest.approx(4 / 7)


def test_token_f1_of_empty_texts_follows_squad_v2():
    assert value("token_f1", "", "the") == 1.0  # both have no tokens once the article is dropped
    assert value("token_f1", "", "Paris") == 0.0


def test_token_f1_reads_unicode_punctuation():
    assert value("token_f1", "«Bonjour», Zoë!", "bonjour zoë") == 1.0


def test_rouge_l_reproduces_the_rouge_paper_examples():
    # Lin (2004), §3.1: reference "police killed the gunman"
    # "police kill the gunman": LCS "police the gunman" = 3 → P = R = 3/4 → F 3/4
    # "the gunman kill police": LCS "the gunman" = 2 → P = R = 2/4 → F 1/2
    assert value("rouge_l", "police kill the gunman", "police killed the gunman") == 0.75
    assert value("rouge_l", "the gunman kill police", "police killed the gunman") == 0.5


def test_rouge_l_weighs_precision_and_recall_equally():
    # LCS "the cat was under the bed" = 6; P 6/7, R 6/6 → F 2·(6/7)/(13/7) = 12/13
    score = scorer_from_spec("rouge_l").score(answer("The cat was found under the bed."),
                                              item("the cat was under the bed"))
    assert score.value == pytest.approx(12 / 13)
    assert score.detail["lcs"] == 6


def test_rouge_l_of_identical_empty_texts_is_one():
    assert value("rouge_l", " ", "") == 1.0
    assert value("rouge_l", "", "text") == 0.0


ROUGE_CASES = [
    ("the cat was found under the bed", "the cat was under the bed"),
    ("police kill the gunman", "police killed the gunman"),
    ("A quick brown fox jumps over the lazy dog!", "the quick brown dog jumps on the log"),
    ("Order #4521 shipped on 2024-03-01 via UPS.", "Your order 4521 shipped 2024-03-01 with UPS"),
    ("one two three four five", "five four three two one"),
]


@pytest.mark.parametrize(("prediction", "target"), ROUGE_CASES)
def test_rouge_l_agrees_with_rouge_score(prediction, target):
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    expected = rouge_scorer.RougeScorer(["rougeL"]).score(target, prediction)["rougeL"].fmeasure
    assert value("rouge_l", prediction, target) == pytest.approx(expected)


# --- a user's function -----------------------------------------------------------------------------------------

CHECKS = '''
from __future__ import annotations

def is_short(text, item) -> bool:
    """The answer has at most three words."""
    return len(text.split()) <= 3

def length_ratio(text, item):
    return min(1.0, len(text) / max(1, len(item.reference)))

def broken(text, item):
    return {}["missing"]

def too_big(text, item):
    return 1.5

def one_argument(text):
    return 1.0
'''


@pytest.fixture
def checks(tmp_path, monkeypatch):
    (tmp_path / "user_checks.py").write_text(CHECKS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "user_checks", raising=False)
    return tmp_path / "user_checks.py"


def test_python_scorer_annotated_bool_is_pass_fail(checks):
    scorer = scorer_from_spec("python:user_checks:is_short")
    assert scorer.binary and scorer.description == "The answer has at most three words."
    assert scorer.score(answer("yes it is"), item("")).passed is True
    assert scorer.score(answer("no it is not"), item("")).passed is False


def test_python_scorer_returning_a_number_is_graded(checks):
    scorer = scorer_from_spec("python:user_checks:length_ratio")
    score = scorer.score(answer("abc"), item("abcdef"))
    assert not scorer.binary and (score.value, score.passed) == (0.5, None)


def test_python_scorer_loads_a_file_path(checks):
    assert scorer_from_spec(f"python:{checks}:is_short").score(answer("ok"), item("")).passed is True


def test_python_scorer_unknown_module_says_how_to_name_one(checks):
    with pytest.raises(ConfigError, match=r"cannot import 'no_such_module'.*python:path/to/file\.py:function"):
        scorer_from_spec("python:no_such_module:fn")


def test_python_scorer_unknown_function_suggests_the_nearest(checks):
    with pytest.raises(ConfigError, match=r"has no 'is_shrt' \(did you mean 'is_short'\?\)"):
        scorer_from_spec("python:user_checks:is_shrt")


def test_python_scorer_must_take_two_arguments(checks):
    with pytest.raises(ConfigError, match=r"must take two arguments, \(answer_text, item\)"):
        scorer_from_spec("python:user_checks:one_argument")


def test_python_scorer_that_raises_names_the_item(checks):
    with pytest.raises(ConfigError, match=r"raised KeyError on item i1"):
        scorer_from_spec("python:user_checks:broken").score(answer("x"), item(""))


def test_python_scorer_returning_out_of_range_is_a_config_error(checks):
    with pytest.raises(ConfigError, match=r"returned 1.5 on item i1; it must return a number in \[0, 1\]"):
        scorer_from_spec("python:user_checks:too_big").score(answer("x"), item(""))


# --- every scorer on missing answers ------------------------------------------------------------------------

DETERMINISTIC = ["exact", "normalized", "contains", "regex:x", "json", "json_fields", "classification",
                 "label:category", "token_f1", "rouge_l"]


@pytest.mark.parametrize("spec", DETERMINISTIC)
def test_a_missing_answer_has_no_value_and_fails_pass_fail_scorers(spec):
    scorer = scorer_from_spec(spec)
    score = scorer.score(answer(None, error="HTTP 500"), item('{"category": "x"}'))
    assert score.value is None
    assert score.passed is (False if scorer.binary else None)
    assert (score.detail["error"], score.scorer, score.system) == ("HTTP 500", spec, "tuned")


@pytest.mark.parametrize("spec", DETERMINISTIC)
def test_ascore_many_scores_in_order_without_an_event_loop_of_its_own(spec):
    scorer = scorer_from_spec(spec)
    answers = [answer("x", "b"), answer(None, "a")]
    items = {"a": item("x", "a"), "b": item("x", "b")}
    scores = asyncio.run(scorer.ascore_many(answers, items))
    assert [s.item_id for s in scores] == ["b", "a"]


# --- names -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "kind", "name"), [
    ("exact", "Exact", "exact"),
    ("Token-F1", "TokenF1", "token_f1"),
    ("rouge_l", "RougeL", "rouge_l"),
    ("contains: refund ", "Contains", "contains:refund"),
    ("contains:", "Contains", "contains"),
    ("json:any", "ValidJSON", "json:any"),
    ("label:category", "Classification", "label:category"),
    ("regex:a:b", "Regex", "regex:a:b"),
])
def test_scorer_from_spec_builds_the_named_scorer(spec, kind, name):
    scorer = scorer_from_spec(spec)
    assert (type(scorer).__name__, scorer.name) == (kind, name)


def test_an_unknown_scorer_lists_the_known_ones_and_the_nearest():
    with pytest.raises(ConfigError) as caught:
        scorer_from_spec("rogue_l")
    assert "Unknown scorer 'rogue_l' (did you mean 'rouge_l'?)" in caught.value.message
    assert all(known in caught.value.message for known in KNOWN_SCORERS)


@pytest.mark.parametrize(("spec", "message"), [
    ("exact:x", "takes no argument"),
    ("regex", "needs an argument: write 'regex:PATTERN'"),
    ("label:", "needs an argument: write 'label:FIELD'"),
    ("json:object", "json takes no argument but 'any'"),
    ("judge:Is it polite?", "needs a judge endpoint"),
    ("pairwise:better?", "not a per-answer scorer"),
    ("python:nocolon", "write python:MODULE:FUNCTION"),
])
def test_a_wrong_spec_says_what_to_write(spec, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        scorer_from_spec(spec)


# --- default scorers -------------------------------------------------------------------------------------------

def items_with(references: Sequence[str]) -> list[Item]:
    return [item(r, str(i)) for i, r in enumerate(references)]


def test_json_object_references_get_the_default_scorers():
    references = ['{"category": "billing"}', '{"category": "security", "priority": 1}']
    assert default_scorer_specs(items_with(references)) == list(DEFAULT_SCORERS) == [
        "json", "json_fields", "normalized"]
    assert [s.name for s in default_scorers(items_with(references))] == list(DEFAULT_SCORERS)


def test_json_array_references_get_json_and_normalized():
    assert default_scorer_specs(items_with(['[1, 2]', '{"a": 1}'])) == ["json", "normalized"]


def test_short_repeated_references_are_labels():
    references = ["positive", "Negative", "neutral", "positive", "negative", "positive"]
    assert default_scorer_specs(items_with(references)) == ["classification"]


def test_short_references_that_rarely_repeat_are_free_text():
    # 4 distinct values among 6 references: more than half, so not a label set
    references = ["Paris", "Rome", "Madrid", "Berlin", "Paris", "Rome"]
    assert default_scorer_specs(items_with(references)) == ["token_f1", "rouge_l"]


def test_long_references_are_free_text():
    references = ["The capital of France is Paris, on the Seine."] * 4
    assert default_scorer_specs(items_with(references)) == ["token_f1", "rouge_l"]


def test_one_non_json_reference_makes_the_set_not_json():
    references = ['{"a": 1}', '{"a": 2}', "oops"]
    assert default_scorer_specs(items_with(references)) == ["token_f1", "rouge_l"]


# --- LLM judges ------------------------------------------------------------------------------------------------

class ScriptedEndpoint(Endpoint):
    """An endpoint whose reply is ``script(prompt)`` (a string, or an exception to raise)."""

    model = "scripted-judge"

    def __init__(self, script: Callable[[str], str | Exception]) -> None:
        self.script = script
        self.params: list[GenerationParams] = []
        self.in_flight = self.most_in_flight = self.closed = 0

    async def _generate(self, messages: Sequence[Any], params: GenerationParams) -> Completion:
        self.params.append(params)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0)
        self.in_flight -= 1
        reply = self.script(messages[-1]["content"])
        if isinstance(reply, Exception):
            raise reply
        return Completion(text=reply, finish_reason="stop", usage=Usage(prompt_tokens=100, completion_tokens=9),
                          cost_usd=0.001)

    async def aclose(self) -> None:
        self.closed += 1


def graded_by_length(prompt: str) -> str:
    """A rubric judge that gives the answer's word count (at most 5) as its score."""
    graded = prompt.split("## Answer to grade\n")[1].split("\n\n## Rubric")[0]
    return json.dumps({"score": min(5, len(graded.split())), "reason": "counted"})


def test_judge_spec_builds_a_rubric_judge_on_the_given_endpoint():
    endpoint = ScriptedEndpoint(lambda prompt: "")
    scorer = scorer_from_spec("judge:Is it polite?", judge=endpoint)
    assert isinstance(scorer, RubricJudge)
    assert (scorer.name, scorer.endpoint, scorer.rubric) == ("judge:Is it polite?", endpoint, "Is it polite?")


@pytest.mark.parametrize(("reply", "expected"), [
    ('{"score": 4, "reason": "clear"}', (4.0, "clear")),
    ('Here is my grade:\n```json\n{"score": 1, "reason": "wrong"}\n```', (1.0, "wrong")),
    ("Score: 5\nReason: complete and polite", (5.0, "complete and polite")),
    ("**Score:** 2 — misses the refund policy", (2.0, "**Score:** 2 — misses the refund policy")),
    ("The score is 3.", (3.0, "The score is 3.")),
    ("I would rate this 3/5.", (3.0, "I would rate this 3/5.")),
    ("4", (4.0, "4")),
])
def test_rubric_replies_are_read_in_their_common_shapes(reply, expected):
    assert parse_rubric_reply(reply) == expected


@pytest.mark.parametrize("reply", ["Score: 9", "I cannot grade this.", '{"score": "high"}', ""])
def test_rubric_replies_without_a_score_in_range_are_unreadable(reply):
    assert parse_rubric_reply(reply) is None


@pytest.mark.parametrize(("reply", "choice"), [
    ('{"winner": "B", "reason": "more precise"}', "B"),
    ('{"winner": "Answer A"}', "A"),
    ('{"winner": "tie"}', "tie"),
    ("Winner: B\nBoth are fine but B cites the policy.", "B"),
    ("The winner is a tie.", "tie"),
    ("**A**", "A"),
])
def test_pairwise_replies_are_read_in_their_common_shapes(reply, choice):
    assert parse_pairwise_reply(reply)[0] == choice


def test_pairwise_reply_without_a_winner_is_unreadable():
    assert parse_pairwise_reply("Both answers have merits.") is None


def test_rubric_judge_value_is_the_score_scaled_to_zero_one():
    endpoint = ScriptedEndpoint(graded_by_length)
    judge = RubricJudge(endpoint, "Is it complete?")
    answers = [answer("one", "1"), answer("one two three four", "2"), answer("a b c d e f", "3")]
    scores = asyncio.run(judge.ascore_many(answers, {str(i): item("ref", str(i)) for i in (1, 2, 3)}))
    # scores 1, 4, 5 → (s − 1) / 4 = 0, 3/4, 1
    assert [s.value for s in scores] == [0.0, 0.75, 1.0]
    assert scores[1].detail == {"score": 4.0, "reason": "counted", "prompt_tokens": 100,
                                "completion_tokens": 9, "cost_usd": 0.001}
    assert {(p.temperature, p.max_tokens) for p in endpoint.params} == {(0.0, 300)}


def test_rubric_judge_prompt_holds_the_conversation_reference_answer_and_rubric():
    prompts: list[str] = []
    endpoint = ScriptedEndpoint(lambda prompt: prompts.append(prompt) or '{"score": 3}')
    RubricJudge(endpoint, "Be polite.").score(answer("Sure thing."), item("Certainly.", question="Help me?"))
    assert prompts == ["## Conversation\nuser: Help me?\n\n## Reference answer (what a good answer looks like)\n"
                       "Certainly.\n\n## Answer to grade\nSure thing.\n\n## Rubric\nBe polite."]


def test_a_failed_judge_call_is_recorded_and_the_rest_are_scored():
    def script(prompt: str) -> str | Exception:
        if "## Answer to grade\nsecond" in prompt:
            return ProviderError("HTTP 500 from the judge", provider="scripted")
        return '{"score": 5, "reason": "fine"}'

    answers = [answer("first", "1"), answer("second", "2"), answer("third", "3")]
    scores = asyncio.run(RubricJudge(ScriptedEndpoint(script), "ok?").ascore_many(
        answers, {str(i): item("r", str(i)) for i in (1, 2, 3)}))
    assert [s.value for s in scores] == [1.0, None, 1.0]
    assert scores[1].detail["error"] == "HTTP 500 from the judge"


def test_an_unreadable_judge_reply_is_no_value_with_the_reply_kept():
    score = RubricJudge(ScriptedEndpoint(lambda p: "Looks good to me"), "ok?").score(answer("x"), item("r"))
    assert score.value is None
    assert score.detail["reply"] == "Looks good to me" and "no score from 1 to 5" in score.detail["error"]


def test_the_judge_asks_nothing_about_a_missing_answer():
    endpoint = ScriptedEndpoint(graded_by_length)
    score = RubricJudge(endpoint, "ok?").score(answer(None, error="timeout"), item("r"))
    assert (score.value, score.detail["error"], endpoint.params) == (None, "timeout", [])


def test_the_judge_runs_at_most_concurrency_calls_at_once():
    endpoint = ScriptedEndpoint(graded_by_length)
    answers = [answer("x", str(i)) for i in range(10)]
    asyncio.run(RubricJudge(endpoint, "ok?").ascore_many(answers, {str(i): item("r", str(i)) for i in range(10)},
                                                         concurrency=3))
    assert endpoint.most_in_flight == 3


def test_the_blocking_judge_closes_its_endpoint_after_the_call():
    endpoint = ScriptedEndpoint(graded_by_length)
    assert RubricJudge(endpoint, "ok?").score(answer("x"), item("r")).value == 0.0
    assert endpoint.closed == 1


def answers_shown(prompt: str) -> tuple[str, str]:
    found = re.search(r"## Answer A\n(.*)\n\n## Answer B\n(.*)\n\n## Criteria", prompt, re.DOTALL)
    assert found, prompt
    return found.group(1), found.group(2)


def prefers(word: str) -> Callable[[str], str]:
    """A fair judge: it picks the answer that contains ``word``, wherever it is shown."""
    def script(prompt: str) -> str:
        first, second = answers_shown(prompt)
        choice = "A" if word in first else "B" if word in second else "tie"
        return json.dumps({"winner": choice, "reason": f"{choice} says {word}"})
    return script


def compare(script: Callable[[str], str | Exception], candidate: str | None, baseline: str | None):
    judge = PairwiseJudge(ScriptedEndpoint(script), "Which is correct?")
    return judge.compare(item("ref"), answer(candidate, system="tuned"), answer(baseline, system="base"))


def test_pairwise_candidate_wins_when_both_orders_prefer_it():
    score = compare(prefers("correct"), "correct answer", "wrong answer")
    assert (score.value, score.detail["winner"], score.system, score.detail["baseline"]) == (
        1.0, "candidate", "tuned", "base")
    assert [(v["order"], v["choice"]) for v in score.detail["verdicts"]] == [
        ("candidate as A", "A"), ("baseline as A", "B")]


def test_pairwise_baseline_wins_when_both_orders_prefer_it():
    score = compare(prefers("correct"), "wrong answer", "correct answer")
    assert (score.value, score.detail["winner"]) == (0.0, "baseline")


def test_a_judge_that_always_prefers_position_a_yields_a_tie_not_a_win():
    score = compare(lambda prompt: '{"winner": "A"}', "candidate answer", "baseline answer")
    assert (score.value, score.detail["winner"]) == (0.5, "tie")
    assert [v["winner"] for v in score.detail["verdicts"]] == ["candidate", "baseline"]


def test_a_tie_in_one_order_makes_the_comparison_a_tie():
    replies = iter(['{"winner": "A"}', '{"winner": "tie"}'])
    score = compare(lambda prompt: next(replies), "candidate answer", "baseline answer")
    assert score.detail["winner"] == "tie"


def test_a_failed_call_in_one_order_leaves_the_comparison_unscored():
    def script(prompt: str) -> str | Exception:
        first, _ = answers_shown(prompt)
        return ProviderError("judge overloaded", provider="scripted") if first == "baseline" else '{"winner": "A"}'

    score = compare(script, "candidate", "baseline")
    assert score.value is None and score.detail["error"] == "judge overloaded"


def test_pairwise_with_a_missing_answer_asks_nothing():
    endpoint = ScriptedEndpoint(prefers("x"))
    score = PairwiseJudge(endpoint, "better?").compare(item("r"), answer("x"), answer(None, system="base"))
    assert (score.value, score.detail["error"], endpoint.params) == (None, "the baseline has no answer", [])


def test_acompare_many_pairs_answers_by_item():
    judge = PairwiseJudge(ScriptedEndpoint(prefers("correct")), "better?")
    items = {"1": item("r", "1"), "2": item("r", "2"), "3": item("r", "3")}
    candidates = [answer("correct", "1"), answer("wrong", "2"), answer("correct", "3")]
    baselines = [answer("correct", "2", system="base"), answer("wrong", "1", system="base")]
    scores = asyncio.run(judge.acompare_many(items, candidates, baselines))
    # item 1: candidate right, baseline wrong → 1; item 2: the reverse → 0; item 3: no baseline answer → None
    assert [s.value for s in scores] == [1.0, 0.0, None]
    assert scores[2].detail == {"baseline": "base", "error": "the baseline has no answer"}
