"""The comparison: exact McNemar and Holm against hand-worked values, the paired bootstrap's promises, and
compare() on a constructed holdout where the candidate is clearly worse on one slice and better on another."""

from __future__ import annotations

import datetime as dt
import statistics

import numpy as np
import pytest

from tuneproxy.evaluation.compare import compare, holm, mcnemar_exact, noise_points, paired_bootstrap
from tuneproxy.evaluation.model import OVERALL, Answer, EvalReport, Item, Score

# --- exact McNemar ----------------------------------------------------------------------------------------------


def test_mcnemar_is_twice_the_binomial_tail_of_the_smaller_count():
    # b=9, c=1: n=10, P(X <= 1) = (C(10,0) + C(10,1)) / 2^10 = (1 + 10) / 1024, so p = 22/1024.
    assert mcnemar_exact(9, 1) == 22 / 1024 == 0.021484375


def test_mcnemar_three_versus_seventeen_by_hand():
    # n=20, P(X <= 3) = (1 + 20 + 190 + 1140) / 2^20 = 1351/1048576, so p = 2702/1048576.
    assert mcnemar_exact(3, 17) == 2702 / 1048576


def test_mcnemar_reproduces_the_armitage_berry_culture_media_example():
    # Armitage & Berry (1994, p. 127), as worked in StatsDirect's exact matched-pairs help: two media for
    # culturing M. tuberculosis on 50 specimens, discordant cells 12 and 2; exact two-sided P = 0.0129.
    # By hand: n=14, P(X <= 2) = (1 + 14 + 91) / 16384, p = 212/16384 = 0.012939...
    assert mcnemar_exact(12, 2) == 212 / 16384
    assert round(mcnemar_exact(12, 2), 4) == 0.0129


def test_mcnemar_does_not_care_which_side_won():
    assert mcnemar_exact(2, 12) == mcnemar_exact(12, 2)


def test_mcnemar_is_one_when_the_systems_never_disagree():
    assert mcnemar_exact(0, 0) == 1.0


def test_mcnemar_caps_a_balanced_split_at_one():
    # b=c=5: 2·P(X <= 5) = 2·638/1024 > 1.
    assert mcnemar_exact(5, 5) == 1.0


def test_mcnemar_of_one_sided_losses_is_two_over_two_to_the_n():
    assert mcnemar_exact(0, 6) == 2 / 64


def test_mcnemar_stays_exact_for_many_discordant_pairs():
    # 1000 vs 0: 2 / 2^1000 underflows nothing it should not; 500 vs 500 is exactly 1.
    assert mcnemar_exact(1000, 0) == 2 / 2**1000
    assert mcnemar_exact(500, 500) == 1.0


def test_mcnemar_refuses_negative_counts():
    with pytest.raises(ValueError, match="counts"):
        mcnemar_exact(-1, 3)


# --- Holm -------------------------------------------------------------------------------------------------------


def test_holm_matches_the_hand_worked_example():
    # Sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → raised to 0.06 (step-down is monotone).
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_caps_adjusted_values_at_one():
    assert holm([0.5, 0.6]) == [1.0, 1.0]


def test_holm_passes_untested_slices_through_and_does_not_count_them():
    # Two tested values: 0.02·2 = 0.04, 0.04·1 = 0.04.
    assert holm([0.02, None, 0.04]) == pytest.approx([0.04, None, 0.04])


def test_holm_leaves_a_single_p_value_alone():
    assert holm([0.03]) == [0.03]
    assert holm([]) == []


def test_holm_refuses_a_p_value_outside_zero_one():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.2, 1.5])


# --- the paired bootstrap ---------------------------------------------------------------------------------------

RNG = np.random.default_rng(7)
GRADED_A = [float(x) for x in RNG.random(200)]
GRADED_B = [float(x) for x in RNG.random(200)]


def test_bootstrap_estimate_is_the_mean_paired_difference_in_points():
    interval = paired_bootstrap(GRADED_A, GRADED_B, resamples=2000)
    assert interval.estimate == pytest.approx(100 * (sum(GRADED_A) - sum(GRADED_B)) / 200, abs=1e-9)


def test_bootstrap_interval_contains_the_estimate():
    interval = paired_bootstrap(GRADED_A, GRADED_B, resamples=2000)
    assert interval.low < interval.estimate < interval.high


def test_bootstrap_records_its_resamples_and_seed():
    interval = paired_bootstrap(GRADED_A, GRADED_B, resamples=1234, seed=42)
    assert (interval.resamples, interval.seed) == (1234, 42)


def test_bootstrap_same_seed_same_interval():
    assert paired_bootstrap(GRADED_A, GRADED_B, seed=3) == paired_bootstrap(GRADED_A, GRADED_B, seed=3)


def test_bootstrap_different_seed_different_interval():
    first, second = paired_bootstrap(GRADED_A, GRADED_B, seed=3), paired_bootstrap(GRADED_A, GRADED_B, seed=4)
    assert (first.low, first.high) != (second.low, second.high)
    assert first.estimate == second.estimate


def test_bootstrap_of_identical_systems_is_exactly_zero():
    interval = paired_bootstrap(GRADED_A, GRADED_A)
    assert (interval.estimate, interval.low, interval.high) == (0.0, 0.0, 0.0)


def test_bootstrap_interval_excludes_zero_for_a_large_effect():
    # The candidate passes 150 of 200, the baseline 100 of the same items (every baseline pass also passes).
    candidate = [1.0] * 150 + [0.0] * 50
    baseline = [1.0] * 100 + [0.0] * 100
    interval = paired_bootstrap(candidate, baseline)
    assert interval.estimate == 25.0
    assert interval.low > 0.0


def test_bootstrap_interval_has_the_width_the_normal_approximation_predicts():
    # For a mean of 200 paired differences the 95% interval is about ±1.96·sd/√n; 10% slack for the bootstrap.
    differences = [100 * (a - b) for a, b in zip(GRADED_A, GRADED_B)]
    expected_half_width = 1.96 * statistics.pstdev(differences) / 200**0.5
    interval = paired_bootstrap(GRADED_A, GRADED_B)
    assert (interval.high - interval.low) / 2 == pytest.approx(expected_half_width, rel=0.1)


def test_bootstrap_confidence_sets_the_interval_level():
    wide = paired_bootstrap(GRADED_A, GRADED_B, confidence=0.99)
    narrow = paired_bootstrap(GRADED_A, GRADED_B, confidence=0.80)
    assert wide.low < narrow.low and narrow.high < wide.high


def test_bootstrap_refuses_unpaired_or_empty_inputs():
    with pytest.raises(ValueError, match="one value per item"):
        paired_bootstrap([1.0, 0.0], [1.0])
    with pytest.raises(ValueError, match="no items"):
        paired_bootstrap([], [])


# --- compare() on a constructed holdout -------------------------------------------------------------------------
#
# security (40 items): few-shot passes all 40, tuned only the first 22 — 18 regressions, nothing improved.
# style (40 items): few-shot passes 10, tuned 35 — 25 improvements.
# misc (3 items): too few to compare.

TUNED, FEW_SHOT = "tuned", "few-shot:8"


def item(slice_: str, i: int) -> Item:
    return Item(id=f"{slice_}-{i}", slice=slice_, reference=f"ref {slice_} {i}",
                messages=[{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": f"first question {i}"},
                          {"role": "assistant", "content": "ok"},
                          {"role": "user", "content": [{"type": "text", "text": f"ask {slice_} {i}"}]}])


def passing(system: str, items: list[Item], passes: set[str], scorer: str = "exact") -> list[Score]:
    return [Score(system=system, item_id=it.id, scorer=scorer, value=float(it.id in passes), passed=it.id in passes)
            for it in items]


SECURITY = [item("security", i) for i in range(40)]
STYLE = [item("style", i) for i in range(40)]
MISC = [item("misc", i) for i in range(3)]
ITEMS = SECURITY + STYLE + MISC
TUNED_PASSES = {it.id for it in SECURITY[:22] + STYLE[:35] + MISC}
FEW_SHOT_PASSES = {it.id for it in SECURITY + STYLE[:10]}
SCORES = passing(TUNED, ITEMS, TUNED_PASSES) + passing(FEW_SHOT, ITEMS, FEW_SHOT_PASSES)
ANSWERS = {(system, it.id): Answer(system=system, item_id=it.id, text=f"{system} says {it.id}")
           for system in (TUNED, FEW_SHOT) for it in ITEMS}


def run(items=ITEMS, scores=SCORES, binary=None, slice_by="category", **options):
    return compare(items, scores, candidate=TUNED, baselines=[FEW_SHOT], binary=binary or {"exact": True},
                   slice_by=slice_by, answers=ANSWERS, resamples=2000, **options)


def result(results, slice_, scorer="exact"):
    (found,) = [r for r in results if r.slice == slice_ and r.scorer == scorer]
    return found


@pytest.fixture(scope="module")
def outcome():
    return run()


def test_compare_gives_the_overall_first_then_each_slice_sorted(outcome):
    results, *_ = outcome
    assert [(r.slice, r.n) for r in results] == [(OVERALL, 83), ("misc", 3), ("security", 40), ("style", 40)]


def test_compare_reports_each_systems_mean_in_points(outcome):
    results, *_ = outcome
    assert result(results, "security").means == {TUNED: 55.0, FEW_SHOT: 100.0}
    assert result(results, "style").means == {TUNED: 87.5, FEW_SHOT: 25.0}


def test_a_significantly_worse_slice_is_worse_and_a_regression(outcome):
    results, *_ = outcome
    (security,) = result(results, "security").comparisons
    assert (security.verdict, security.wins, security.losses) == ("worse", 0, 18)
    assert security.difference.estimate == -45.0 and security.difference.high < 0
    assert security.mcnemar_p == 2 / 2**18
    # Two slices tested; style's p (2/2^25) is the smaller, so security's is multiplied by 1.
    assert security.holm_p == security.mcnemar_p
    report = EvalReport(created_at=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc), candidate=TUNED, systems=[],
                        scorers=["exact"], items=len(ITEMS), results=results)
    assert security in report.regressions


def test_a_significantly_better_slice_is_better(outcome):
    results, *_ = outcome
    (style,) = result(results, "style").comparisons
    assert (style.verdict, style.wins, style.losses) == ("better", 25, 0)
    assert style.difference.low > 0


def test_a_tiny_slice_says_too_few_examples_instead_of_an_interval(outcome):
    results, *_ = outcome
    (misc,) = result(results, "misc").comparisons
    assert misc.verdict == "too few examples"
    assert misc.difference is None and misc.mcnemar_p is None and misc.holm_p is None
    assert misc.line == "misc: too few examples to compare tuned with few-shot:8 (3; at least 10 needed)"


def test_the_worse_slice_verdict_line_reads_plainly(outcome):
    results, *_ = outcome
    line = result(results, "security").comparisons[0].line
    assert line.startswith("security: tuned worse than few-shot:8, -45 points [-")
    assert line.endswith("], 18 flips")


def test_verdicts_are_one_line_per_slice_and_overall_for_the_primary_scorer(outcome):
    results, _, verdicts, _ = outcome
    assert verdicts == [result(results, s).comparisons[0].line for s in (OVERALL, "misc", "security", "style")]
    assert verdicts[0].startswith("overall: ")


def test_flips_list_every_regression_and_improvement_with_both_answers(outcome):
    _, flips, *_ = outcome
    regressed = [f for f in flips if f.direction == "regressed"]
    improved = [f for f in flips if f.direction == "improved"]
    assert [f.item_id for f in regressed] == [it.id for it in SECURITY[22:]]
    # A slice too small to compare still lists its flips: they are facts about items, not inferences.
    assert [f.item_id for f in improved] == [it.id for it in STYLE[10:35] + MISC]
    first = regressed[0]
    assert (first.slice, first.scorer, first.baseline, first.candidate) == ("security", "exact", FEW_SHOT, TUNED)
    assert first.baseline_answer == "few-shot:8 says security-22"
    assert first.candidate_answer == "tuned says security-22"
    assert first.prompt == "ask security 22"  # the last user message, not the first
    assert first.reference == "ref security 22"


def test_fewer_than_100_items_warns_with_the_width_they_buy(outcome):
    *_, warnings = outcome
    # 83 items: 100·1.96·√(0.5/83) = 15.2 points.
    assert warnings[0].startswith("only 83 held-out examples: a difference must be about ±15 points")
    assert noise_points(83) == pytest.approx(15.21, abs=0.01)


def test_small_slices_are_named_once_in_the_warnings(outcome):
    *_, warnings = outcome
    assert [w for w in warnings if "misc" in w] == ["1 slice with fewer than 10 examples not compared: misc (3)"]


def test_a_holdout_of_100_or_more_gives_no_size_warning():
    items = [item("all", i) for i in range(100)]
    scores = passing(TUNED, items, set()) + passing(FEW_SHOT, items, set())
    *_, warnings = run(items, scores, slice_by=None)
    assert warnings == []


def test_without_a_slice_key_only_the_overall_is_compared(outcome):
    results, _, verdicts, _ = run(slice_by=None)
    assert [r.slice for r in results] == [OVERALL]
    assert len(verdicts) == 1


def test_missing_answers_count_as_zero():
    items = [item("all", i) for i in range(4)]
    scores = [Score(system=TUNED, item_id="all-0", scorer="rouge", value=1.0),
              Score(system=TUNED, item_id="all-1", scorer="rouge", value=None),  # the answer failed
              Score(system=FEW_SHOT, item_id="all-0", scorer="rouge", value=0.5)]  # the rest were never scored
    results, *_ = run(items, scores, binary={"rouge": False}, slice_by=None)
    assert results[0].means == {TUNED: 25.0, FEW_SHOT: 12.5}


def test_holm_corrects_across_slices_but_not_the_overall():
    # Two slices of 20, six regressions each: each slice's McNemar p is 2/64 = 0.03125, Holm makes both
    # 0.0625 — not significant — while the overall's 12 regressions (p = 2/4096) stand uncorrected.
    items = [item("a", i) for i in range(20)] + [item("b", i) for i in range(20)]
    losses = {f"{s}-{i}" for s in "ab" for i in range(6)}
    scores = passing(TUNED, items, {it.id for it in items} - losses) + passing(FEW_SHOT, items, {it.id for it in items})
    results, *_ = run(items, scores)
    (overall,) = result(results, OVERALL).comparisons
    (a,) = result(results, "a").comparisons
    assert (a.mcnemar_p, a.holm_p, a.verdict) == (2 / 64, 2 / 32, "no significant difference")
    assert a.line.endswith("6 flips (exact McNemar p = 0.062, Holm-corrected across 2 slices)")
    assert (overall.mcnemar_p, overall.holm_p, overall.verdict) == (2 / 4096, 2 / 4096, "worse")


def test_a_graded_scorer_is_judged_by_its_bootstrap_interval():
    items = [item("all", i) for i in range(60)]
    scores = ([Score(system=TUNED, item_id=it.id, scorer="rouge", value=0.8 + 0.002 * i) for i, it in enumerate(items)]
              + [Score(system=FEW_SHOT, item_id=it.id, scorer="rouge", value=0.5 + 0.004 * i)
                 for i, it in enumerate(items)])
    results, flips, verdicts, _ = run(items, scores, binary={"rouge": False}, slice_by=None)
    (c,) = results[0].comparisons
    assert c.verdict == "better" and c.difference.low > 0
    assert c.mcnemar_p is None and c.holm_p < 0.05
    assert flips == [] and not verdicts[0].endswith("flips")


def test_identical_systems_show_no_significant_difference():
    items = [item("all", i) for i in range(30)]
    passes = {it.id for it in items[:15]}
    results, flips, verdicts, _ = run(items, passing(TUNED, items, passes) + passing(FEW_SHOT, items, passes),
                                      slice_by=None)
    (c,) = results[0].comparisons
    assert (c.verdict, c.mcnemar_p) == ("no significant difference", 1.0)
    assert verdicts == ["overall: no significant difference between tuned and few-shot:8, 0 points [0, 0], 0 flips"]
    assert flips == []


def test_the_primary_scorer_is_the_first_one_named():
    rouge = [Score(system=s, item_id=it.id, scorer="rouge", value=0.5) for s in (TUNED, FEW_SHOT) for it in ITEMS]
    results, flips, verdicts, _ = run(scores=SCORES + rouge, binary={"rouge": False, "exact": True})
    assert [r.scorer for r in results] == ["rouge"] * 4 + ["exact"] * 4
    assert verdicts[0].startswith("overall: no significant difference")  # rouge: equal everywhere
    assert {f.scorer for f in flips} == {"exact"}  # graded scorers have no flips


def test_compare_is_reproducible_with_a_seed(outcome):
    assert run() == outcome


def test_scores_for_an_item_not_compared_are_refused():
    stray = Score(system=TUNED, item_id="nowhere", scorer="exact", value=1.0, passed=True)
    with pytest.raises(ValueError, match="nowhere"):
        run(scores=[*SCORES, stray])


def test_two_scores_for_one_answer_are_refused():
    with pytest.raises(ValueError, match="two exact scores"):
        run(scores=[*SCORES, SCORES[0]])


def test_the_candidate_cannot_also_be_a_baseline():
    with pytest.raises(ValueError, match="once"):
        compare(ITEMS, SCORES, candidate=TUNED, baselines=[TUNED], binary={"exact": True}, slice_by=None)


def test_an_item_the_scorer_could_not_judge_for_one_system_is_left_out_for_every_system():
    items = [Item(id=f"i{n}", messages=[{"role": "user", "content": "q"}], reference="a") for n in range(12)]
    scores = [Score(system=system, item_id=item.id, scorer="judge", value=1.0) for item in items
              for system in ("tuned", "base")]
    # the judge's call failed for the base's answer to i0: not a zero for the base, no item at all
    scores[1] = Score(system="base", item_id="i0", scorer="judge", value=None, judged=False)
    results, _, _, _ = compare(items, scores, candidate="tuned", baselines=["base"], binary={"judge": False},
                               slice_by=None, resamples=200)
    overall = results[0]
    assert overall.n == 11
    assert overall.means == {"tuned": 100.0, "base": 100.0}
    assert overall.comparisons[0].difference.estimate == 0.0
