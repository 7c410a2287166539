"""Scores become comparisons: the candidate against each baseline, per scorer and per slice, with intervals.

Every number here is explained in ``docs/evaluation-statistics.md``. In short: the paired difference
(candidate − baseline, in points) with a seeded percentile-bootstrap interval; for pass/fail scorers an
exact McNemar test on the items the two systems disagree on; Holm's correction across the slices of one
scorer and baseline. A difference is called significant only when its (Holm-corrected) p-value is below
``alpha`` *and* its interval excludes 0, so a verdict never contradicts the numbers printed beside it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from tuneproxy.evaluation.model import OVERALL, Answer, Comparison, Flip, Interval, Item, Score, SliceResult

Array = npt.NDArray[np.float64]
Verdict = Literal["better", "worse", "no significant difference", "too few examples"]

RECOMMENDED_ITEMS = 100  # fewer held-out examples than this earns a warning with the interval they buy
NO_VALUE = "(none)"  # the slice of items that have no value for the slice key
_Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
_INDICES_PER_CHUNK = 2_000_000  # resampled indices held in memory at once (16 MB)


# --- the three statistics ---------------------------------------------------------------------------------------


def paired_bootstrap(candidate: Sequence[float], baseline: Sequence[float], *, resamples: int = 10_000,
                     seed: int = 0, confidence: float = 0.95) -> Interval:
    """The mean paired difference (candidate − baseline) ×100 and its percentile-bootstrap interval.

    Items are resampled with replacement, keeping each item's two scores together; the interval is the
    central ``confidence`` share of the ``resamples`` resampled means. The same inputs and seed give the
    same interval.
    """
    interval, _ = _bootstrap(_differences(candidate, baseline), resamples=resamples, seed=seed,
                             confidence=confidence)
    return interval


def mcnemar_exact(wins: int, losses: int) -> float:
    """The two-sided exact McNemar p-value: a binomial test that the discordant pairs split 50/50.

    ``p = min(1, 2·P(X ≤ min(wins, losses)))`` with ``X ~ Binomial(wins + losses, 1/2)``; 1 when the two
    systems never disagree. Computed in exact integer arithmetic.
    """
    if wins < 0 or losses < 0:
        raise ValueError(f"wins and losses are counts, got {wins} and {losses}")
    n = wins + losses
    if n == 0:
        return 1.0
    term = tail = 1  # C(n, 0)
    for i in range(min(wins, losses)):
        term = term * (n - i) // (i + 1)  # C(n, i + 1), exactly
        tail += term
    return min(1.0, 2 * tail / (1 << n))


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm–Bonferroni step-down adjusted p-values, in the order given; ``None`` passes through untested.

    The k-th smallest of m p-values becomes ``max over j ≤ k of min(1, (m − j + 1)·p_(j))``; rejecting
    where the adjusted value is below alpha controls the family-wise error rate at alpha.
    """
    tested = [(p, i) for i, p in enumerate(p_values) if p is not None]
    for p, _ in tested:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"a p-value must lie in [0, 1], got {p}")
    adjusted = list(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(tested)):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[i] = running
    return adjusted


def _differences(candidate: Sequence[float], baseline: Sequence[float]) -> Array:
    if len(candidate) != len(baseline):
        raise ValueError(f"paired scores must have one value per item each: {len(candidate)} vs {len(baseline)}")
    if not candidate:
        raise ValueError("no items to compare")
    return (np.asarray(candidate, dtype=np.float64) - np.asarray(baseline, dtype=np.float64)) * 100.0


def _bootstrap(differences: Array, *, resamples: int, seed: int, confidence: float) -> tuple[Interval, float]:
    """The interval, and the bootstrap's two-sided p-value for "no difference" from the same resamples."""
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    means = _resampled_means(differences, resamples, seed)
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    interval = Interval(estimate=float(differences.mean()), low=float(low), high=float(high),
                        resamples=resamples, seed=seed)
    # The share of resampled means on the far side of 0, doubled; +1 counts the observed sample, so the
    # p-value is never 0 (its floor is 2 / (resamples + 1)).
    beyond = min(int(np.count_nonzero(means <= 0.0)), int(np.count_nonzero(means >= 0.0)))
    return interval, min(1.0, 2 * (beyond + 1) / (resamples + 1))


def _resampled_means(differences: Array, resamples: int, seed: int) -> Array:
    rng = np.random.default_rng(seed)
    n = len(differences)
    means = np.empty(resamples, dtype=np.float64)
    rows = max(1, _INDICES_PER_CHUNK // n)
    for start in range(0, resamples, rows):
        stop = min(resamples, start + rows)
        indices = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = differences[indices].mean(axis=1)
    return means


# --- compare(): every scorer, slice and baseline --------------------------------------------------------------


@dataclass(frozen=True)
class _Test:
    """One comparison before the verdict: the facts, and the raw p-value that Holm then corrects."""

    n: int
    difference: Interval | None
    p: float | None
    wins: int
    losses: int


def compare(items: Sequence[Item], scores: Sequence[Score], *, candidate: str, baselines: Sequence[str],
            binary: Mapping[str, bool], slice_by: str | None,
            answers: Mapping[tuple[str, str], Answer] | None = None, resamples: int = 10_000, seed: int = 0,
            min_slice: int = 10, alpha: float = 0.05) -> tuple[list[SliceResult], list[Flip], list[str], list[str]]:
    """Compare ``candidate`` with each baseline on every scorer, overall and per slice.

    ``binary`` names every scorer, in order (the first is the primary one), and says whether it is
    pass/fail. Returns ``(results, flips, verdicts, warnings)``: a :class:`SliceResult` per scorer and slice
    (the overall one, ``OVERALL``, first), the items a pass/fail scorer flips, one plain verdict line per
    slice and baseline for the primary scorer, and what the reader should be warned of.
    """
    _check(items, candidate, baselines, binary, min_slice, alpha)
    systems = [candidate, *baselines]
    outcomes = _outcomes(items, scores, systems, binary)
    judged = _judged(items, scores, systems, binary)
    position = {item.id: i for i, item in enumerate(items)}
    groups = _groups(items, slice_by)
    results: list[SliceResult] = []
    verdicts: list[str] = []
    for number, (scorer, is_binary) in enumerate(binary.items()):
        kept = [(label, rows[judged[scorer][rows]]) for label, rows in groups]  # what the scorer could judge
        scorer_results = [SliceResult(slice=label, scorer=scorer, n=len(rows),
                                      means={s: _points_mean(outcomes[scorer][s][rows]) for s in systems})
                          for label, rows in kept if len(rows) or label == OVERALL]
        for baseline in baselines:
            tests = [_test(outcomes[scorer][candidate][rows], outcomes[scorer][baseline][rows], is_binary,
                           min_slice=min_slice, resamples=resamples, seed=seed, alpha=alpha)
                     for label, rows in kept if len(rows) or label == OVERALL]
            # The overall is a family of one; Holm corrects across the slices only.
            corrected = [tests[0].p, *holm([t.p for t in tests[1:]])]
            family = sum(t.p is not None for t in tests[1:])
            for result, test, holm_p in zip(scorer_results, tests, corrected):
                result.comparisons.append(_comparison(result.slice, candidate, baseline, test, holm_p, is_binary,
                                                      family=family if result.slice != OVERALL else 1,
                                                      min_slice=min_slice, alpha=alpha))
        results.extend(scorer_results)
        if number == 0:
            verdicts = [c.line for r in scorer_results for c in r.comparisons]
    flips = [flip for scorer, is_binary in binary.items() if is_binary for baseline in baselines
             for flip in _flips(items, outcomes[scorer], scorer, candidate, baseline, answers or {})
             if judged[scorer][position[flip.item_id]]]
    return results, flips, verdicts, _warnings(groups, min_slice)


def _check(items: Sequence[Item], candidate: str, baselines: Sequence[str], binary: Mapping[str, bool],
           min_slice: int, alpha: float) -> None:
    if not items:
        raise ValueError("no items to compare")
    if len({item.id for item in items}) != len(items):
        raise ValueError("item ids must be unique: the same id appears more than once")
    if candidate in baselines or len(set(baselines)) != len(baselines):
        raise ValueError(f"each system may appear once: candidate {candidate!r}, baselines {list(baselines)}")
    if not binary:
        raise ValueError("no scorers to compare on")
    if min_slice < 1:
        raise ValueError(f"min_slice must be at least 1, got {min_slice}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha}")
    if any(item.slice == OVERALL for item in items):
        raise ValueError(f"{OVERALL!r} names every item; it cannot be a slice value")


def _outcomes(items: Sequence[Item], scores: Sequence[Score], systems: Sequence[str],
              binary: Mapping[str, bool]) -> dict[str, dict[str, Array]]:
    """Scorer → system → one value per item, in the items' order: 1/0 for pass/fail scorers, the value for
    graded ones, and 0 wherever the score or its value is missing."""
    position = {item.id: i for i, item in enumerate(items)}
    table = {scorer: {system: np.zeros(len(items)) for system in systems} for scorer in binary}
    seen: set[tuple[str, str, str]] = set()
    for score in scores:
        if score.scorer not in table or score.system not in systems:
            continue
        if score.item_id not in position:
            raise ValueError(f"a {score.scorer} score of {score.system} is for item {score.item_id!r}, "
                             "which is not among the items compared")
        key = (score.system, score.item_id, score.scorer)
        if key in seen:
            raise ValueError(f"two {score.scorer} scores of {score.system} for item {score.item_id!r}")
        seen.add(key)
        table[score.scorer][score.system][position[score.item_id]] = _outcome(score, binary[score.scorer])
    return table


def _judged(items: Sequence[Item], scores: Sequence[Score], systems: Sequence[str],
            binary: Mapping[str, bool]) -> dict[str, npt.NDArray[np.bool_]]:
    """Scorer → which items every system's answer could be judged on (an item the scorer could not judge
    for one system is left out for all, so a failed judge call does not count against that system)."""
    position = {item.id: i for i, item in enumerate(items)}
    mask = {scorer: np.ones(len(items), dtype=bool) for scorer in binary}
    for score in scores:
        if score.scorer in mask and score.system in systems and not score.judged and score.item_id in position:
            mask[score.scorer][position[score.item_id]] = False
    return mask


def _outcome(score: Score, is_binary: bool) -> float:
    if is_binary:
        return 1.0 if score.passed else 0.0
    return score.value or 0.0


def _points_mean(values: Array) -> float:
    if not len(values):
        return 0.0  # no item could be judged: the comparison says "too few examples"
    return float(values.sum() * 100.0 / len(values))  # summed first: 22 passes of 40 is exactly 55.0


def _groups(items: Sequence[Item], slice_by: str | None) -> list[tuple[str, npt.NDArray[np.intp]]]:
    """The overall group, then one per slice value (sorted), as row indices into the items."""
    groups = [(OVERALL, np.arange(len(items)))]
    if slice_by is not None:
        labels = [item.slice if item.slice is not None else NO_VALUE for item in items]
        for label in sorted(set(labels)):
            groups.append((label, np.flatnonzero([x == label for x in labels])))
    return groups


def _test(candidate: Array, baseline: Array, is_binary: bool, *, min_slice: int, resamples: int, seed: int,
          alpha: float) -> _Test:
    wins = losses = 0
    if is_binary:
        wins = int(np.count_nonzero((candidate == 1.0) & (baseline == 0.0)))
        losses = int(np.count_nonzero((candidate == 0.0) & (baseline == 1.0)))
    if len(candidate) < min_slice:
        return _Test(len(candidate), None, None, wins, losses)
    # The interval's confidence matches alpha, so "excludes 0" and "p < alpha" speak of the same level.
    interval, bootstrap_p = _bootstrap((candidate - baseline) * 100.0, resamples=resamples, seed=seed,
                                       confidence=1.0 - alpha)
    p = mcnemar_exact(wins, losses) if is_binary else bootstrap_p
    return _Test(len(candidate), interval, p, wins, losses)


def _comparison(label: str, candidate: str, baseline: str, test: _Test, holm_p: float | None, is_binary: bool, *,
                family: int, min_slice: int, alpha: float) -> Comparison:
    verdict = _verdict(test.difference, holm_p, alpha)
    return Comparison(candidate=candidate, baseline=baseline, difference=test.difference,
                      mcnemar_p=test.p if is_binary else None, holm_p=holm_p, wins=test.wins, losses=test.losses,
                      verdict=verdict,
                      line=_line(label, candidate, baseline, verdict, test, holm_p, is_binary, family=family,
                                 min_slice=min_slice))


def _verdict(difference: Interval | None, p: float | None, alpha: float) -> Verdict:
    if difference is None or p is None:
        return "too few examples"
    if p < alpha and difference.low > 0.0:
        return "better"
    if p < alpha and difference.high < 0.0:
        return "worse"
    return "no significant difference"


def _line(label: str, candidate: str, baseline: str, verdict: Verdict, test: _Test, holm_p: float | None,
          is_binary: bool, *, family: int, min_slice: int) -> str:
    where = "overall" if label == OVERALL else label
    if test.difference is None or holm_p is None:
        return (f"{where}: too few examples to compare {candidate} with {baseline} "
                f"({test.n}; at least {min_slice} needed)")
    d = test.difference
    numbers = f"{_points(d.estimate)} points [{_points(d.low)}, {_points(d.high)}]"
    if is_binary:
        flips = test.wins + test.losses
        numbers += f", {flips} flip{'' if flips == 1 else 's'}"
    if verdict == "better":
        return f"{where}: {candidate} better than {baseline}, {numbers}"
    if verdict == "worse":
        return f"{where}: {candidate} worse than {baseline}, {numbers}"
    line = f"{where}: no significant difference between {candidate} and {baseline}, {numbers}"
    if d.low > 0.0 or d.high < 0.0:  # the interval alone would say otherwise: say which test held it back
        test_name = "exact McNemar" if is_binary else "bootstrap"
        correction = f", Holm-corrected across {family} slices" if family > 1 else ""
        line += f" ({test_name} p = {holm_p:.2g}{correction})"
    return line


def _points(x: float) -> str:
    """Whole points, signed; one decimal below 1 point, so a small nonzero bound does not read as 0."""
    text = f"{x:+.1f}" if abs(x) < 1.0 else f"{x:+.0f}"
    return "0" if float(text) == 0.0 else text


def _flips(items: Sequence[Item], outcomes: Mapping[str, Array], scorer: str, candidate: str, baseline: str,
           answers: Mapping[tuple[str, str], Answer]) -> list[Flip]:
    flips = []
    for item, now, before in zip(items, outcomes[candidate], outcomes[baseline]):
        if now == before:
            continue
        flips.append(Flip(item_id=item.id, slice=item.slice, scorer=scorer, baseline=baseline, candidate=candidate,
                          direction="improved" if now > before else "regressed", prompt=_prompt(item),
                          reference=item.reference, baseline_answer=_text(answers, baseline, item.id),
                          candidate_answer=_text(answers, candidate, item.id)))
    return flips


def _prompt(item: Item) -> str:
    """The last user message's text (text parts joined by newlines when the content is a list of parts)."""
    for message in reversed(item.messages):
        if message.get("role") == "user":
            return _content_text(message.get("content"))
    return ""


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(part["text"]) for part in content if isinstance(part, dict) and "text" in part)
    return ""


def _text(answers: Mapping[tuple[str, str], Answer], system: str, item_id: str) -> str | None:
    answer = answers.get((system, item_id))
    return answer.text if answer is not None else None


def _warnings(groups: Sequence[tuple[str, npt.NDArray[np.intp]]], min_slice: int) -> list[str]:
    warnings = []
    n = len(groups[0][1])
    if n < RECOMMENDED_ITEMS:
        warnings.append(f"only {n} held-out examples: a difference must be about ±{noise_points(n):.0f} points "
                        "to be told apart from noise (95% interval half-width for two uncorrelated pass/fail "
                        f"systems at p=0.5: 1.96·√(0.5/{n})·100); {RECOMMENDED_ITEMS}–200 are recommended")
    small = [f"{label} ({len(rows)})" for label, rows in groups[1:] if len(rows) < min_slice]
    if small:
        warnings.append(f"{len(small)} slice{'' if len(small) == 1 else 's'} with fewer than {min_slice} "
                        f"examples not compared: {', '.join(small)}")
    return warnings


def noise_points(n: int) -> float:
    """The 95% half-width, in points, of the paired difference of two uncorrelated pass/fail systems that
    each pass half of ``n`` items: ``100·1.96·√(2·0.5·0.5 / n)`` — the smallest effect ``n`` items resolve."""
    return 100.0 * _Z95 * math.sqrt(2 * 0.25 / n)
