"""The cost desk: what the ledger says was spent — each bill once, deployments by the hour (a running one up to
now), the evaluation's answers, estimates against bills — grouped, filtered by date, as JSON and as a table
that fits 80 columns; and `tuneproxy costs` on an empty or damaged ledger."""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import sqlite3

import pytest
from rich.console import Console

import tuneproxy.spend
from tests.cli_helpers import run_cli
from tuneproxy.contract import Completion, CostEstimate, Deployment, GenerationParams, JobRecord, JobStatus, Usage
from tuneproxy.ledger import Ledger
from tuneproxy.providers.together import TogetherProvider
from tuneproxy.render import spend_table
from tuneproxy.spend import SpendReport, from_ledger, job_spend
from tuneproxy.tuned import TunedModel

UTC = dt.timezone.utc


def at(day: int, hour: int = 0, minute: int = 0, month: int = 11) -> dt.datetime:
    return dt.datetime(2026, month, day, hour, minute, tzinfo=UTC)


NOW = at(3, 2, 30)  # dep-2 has been up 2.5 hours


class FakeClock:
    """The ledger's clock, moved by hand: every row it writes is stamped with this time."""

    def __init__(self) -> None:
        self.now = at(30, 12, month=10)

    def __call__(self) -> dt.datetime:
        return self.now


def job(provider: str, job_id: str, base: str, intent: str | None, status=JobStatus.SUCCEEDED, **over) -> JobRecord:
    return JobRecord(provider=provider, job_id=job_id, base_model=base, status=status, raw_status=status.value,
                     intent_id=intent, **over)


def estimate(provider: str, model: str, usd: float, low: float, high: float, **over) -> CostEstimate:
    return CostEstimate(provider=provider, model=model, usd=usd, usd_low=low, usd_high=high, basis="test", **over)


def deployment(provider: str, deployment_id: str, model: str, state: str, usd_per_hour: float | None,
               **over) -> Deployment:
    return Deployment(provider=provider, deployment_id=deployment_id, model=model, state=state,
                      raw_state=state.upper(), usd_per_hour=usd_per_hour, **over)


def answer(ledger: Ledger, item_id: str, provider: str, model: str, usd: float | None) -> None:
    completion = Completion(text="ok", finish_reason="stop", usage=Usage(prompt_tokens=10, completion_tokens=2),
                            cost_usd=usd)
    ledger.save_answer(f"{provider}:{model}", "params", item_id, completion, prompt_sha256="sha", provider=provider,
                       model=model, params=GenerationParams())


TUNED_A = job("together", "ft-a", "llama-8b", "intent-a", tuned_model="acme/llama-8b-ft-a")


@pytest.fixture
def ledger() -> Ledger:
    """A ledger filled through its own API, with figures chosen to add up exactly:

    - ft-a (together): estimated $3, then $4 by the service ($3.50–$4.50); billed $4.50, then (the bill moved)
      $5 on Nov 2. Its tuned model is served by dep-1 and answered $0.25 of evaluation.
    - ftjob-b (openai): estimated $2 ($1–$3), billed $1.50 on Oct 31.
    - ft-c (together): billed on Nov 3, but nothing could price it: unknown.
    - dep-1 (together, $2/hour): up from Oct 31 22:00 until seen stopped Nov 1 01:00: 3 hours, $6.
    - dep-2 (fireworks, $4/hour, no job): up since Nov 3 00:00, still running: $10 at NOW.
    - dep-3 (together, no hourly price): up an hour on Nov 3: unknown.
    - the base model llama-8b answered $0.50 of evaluation (no job: it is nobody's tuned model).
    """
    clock = FakeClock()
    ledger = Ledger(clock=clock)
    ledger.record_estimate(estimate("together", "llama-8b", 3.0, 2.7, 3.3), "intent-a")
    ledger.record_estimate(estimate("together", "llama-8b", 4.0, 3.5, 4.5, authoritative=True), "intent-a")
    ledger.save_job(job("together", "ft-a", "llama-8b", "intent-a", JobStatus.RUNNING))
    ledger.record_estimate(estimate("openai", "gpt-4o-mini", 2.0, 1.0, 3.0), "intent-b")

    clock.now = at(31, 9, month=10)
    ledger.record_billed(job("openai", "ftjob-b", "gpt-4o-mini", "intent-b"), usd=1.5, basis="openai tokens")
    ledger.save_job(job("openai", "ftjob-b", "gpt-4o-mini", "intent-b"))

    clock.now = at(31, 22, 5, month=10)
    dep_1 = deployment("together", "dep-1", TUNED_A.tuned_model, "creating", 2.0,
                       serving_model="acme/llama-8b-ft-a-dep-1", created_at=at(31, 22, month=10))
    ledger.save_deployment(dep_1)
    clock.now = at(1, 1)
    ledger.save_deployment(dep_1.model_copy(update={"state": "stopped"}))
    clock.now = at(1, 9)  # seen stopped again later: it stopped billing when first seen stopped
    ledger.save_deployment(dep_1.model_copy(update={"state": "stopped"}))

    clock.now = at(2, 10)
    ledger.record_billed(TUNED_A, usd=4.5, basis="together's bill")
    clock.now = at(2, 11)
    ledger.record_billed(TUNED_A, usd=5.0, basis="together's bill, revised")
    ledger.save_job(TUNED_A)
    clock.now = at(2, 12)
    answer(ledger, "item-1", "together", "acme/llama-8b-ft-a-dep-1", 0.25)
    answer(ledger, "item-1", "together", "llama-8b", 0.5)
    answer(ledger, "item-2", "together", "llama-8b", None)  # not priced: no cost row at all

    clock.now = at(3)
    ledger.save_deployment(deployment("fireworks", "dep-2", "acct/gpt-ft", "ready", 4.0))
    ledger.save_deployment(deployment("together", "dep-3", "acme/other", "ready", None))
    clock.now = at(3, 0, 30)
    ledger.record_billed(job("together", "ft-c", "llama-70b", None), usd=None,
                         basis="together reported for ft-c: 9 gpu_hours (no price known to turn it into dollars)")
    clock.now = at(3, 1)
    ledger.save_deployment(deployment("together", "dep-3", "acme/other", "stopped", None))
    return ledger


def sums(report: SpendReport) -> dict[str | None, tuple[float, float, float, float, int, int]]:
    """Each group as (training, deployment, inference, total, unknown, running), in the report's order."""
    return {g.key: (g.training_usd, g.deployment_usd, g.inference_usd, g.total_usd, g.unknown, g.running)
            for g in report.groups}


# -- what is counted ------------------------------------------------------------------------------------

def test_a_bill_that_moved_is_counted_once_at_its_latest_figure(ledger):
    report = from_ledger(ledger, now=NOW)
    ft_a = next(j for j in report.jobs if j.job_id == "ft-a")
    assert ft_a.billed_usd == 5.0 and ft_a.billed_at == at(2, 11)
    assert report.total.training_usd == 6.5  # 5 + 1.5, not 4.5 + 5 + 1.5


def test_of_two_bills_of_one_job_left_by_racing_schema_1_clients_the_newest_counts(ledger):
    ledger.db.execute("INSERT INTO costs (recorded_at, provider, intent_id, job_id, kind, model, usd, basis) VALUES "
                      "(?, 'together', 'intent-a', 'ft-a', 'billed', 'llama-8b', 7.0, 'a racing client')",
                      (at(2, 13).isoformat(),))
    report = from_ledger(ledger, now=NOW)
    assert [(j.job_id, j.billed_usd) for j in report.jobs].count(("ft-a", 7.0)) == 1
    assert report.total.training_usd == 8.5


def test_training_by_provider_agrees_with_the_ledgers_own_spend(ledger):
    training = {g.key: g.training_usd for g in from_ledger(ledger, now=NOW).groups if g.training_usd}
    assert training == ledger.spend() == {"together": 5.0, "openai": 1.5}


def test_costs_are_grouped_by_provider_by_default_most_spent_first(ledger):
    report = from_ledger(ledger, now=NOW)
    assert report.by == "provider"
    assert list(sums(report).items()) == [
        ("together", (5.0, 6.0, 0.75, 11.75, 2, 0)),
        ("fireworks", (0.0, 10.0, 0.0, 10.0, 0, 1)),
        ("openai", (1.5, 0.0, 0.0, 1.5, 0, 0)),
    ]
    assert report.total.model_dump() == {"training_usd": 6.5, "deployment_usd": 16.0, "inference_usd": 0.75,
                                         "total_usd": 23.25, "unknown": 2, "running": 1}


def test_by_job_a_deployment_and_its_answers_count_for_the_job_whose_tuned_model_it_serves(ledger):
    report = from_ledger(ledger, by="job", now=NOW)
    assert list(sums(report).items()) == [
        ("ft-a", (5.0, 6.0, 0.25, 11.25, 0, 0)),  # its bill, dep-1, and dep-1's answers
        (None, (0.0, 10.0, 0.5, 10.5, 1, 1)),  # dep-2, dep-3 (unknown), the base model's answers
        ("ftjob-b", (1.5, 0.0, 0.0, 1.5, 0, 0)),
        ("ft-c", (0.0, 0.0, 0.0, 0.0, 1, 0)),
    ]
    assert {d.deployment_id: d.job_id for d in report.deployments} == {"dep-1": "ft-a", "dep-2": None, "dep-3": None}


def test_by_month_uses_utc_months_and_splits_a_deployment_at_the_month_boundary(ledger):
    report = from_ledger(ledger, by="month", now=NOW)
    assert list(sums(report).items()) == [
        ("2026-10", (1.5, 4.0, 0.0, 5.5, 0, 0)),  # ftjob-b's bill, dep-1's 2 hours of October
        ("2026-11", (5.0, 12.0, 0.75, 17.75, 2, 1)),  # dep-1's last hour, dep-2 still running
    ]


def test_by_model_is_the_model_the_money_went_on(ledger):
    report = from_ledger(ledger, by="model", now=NOW)
    assert list(sums(report).items()) == [
        ("acct/gpt-ft", (0.0, 10.0, 0.0, 10.0, 0, 1)),
        ("acme/llama-8b-ft-a", (0.0, 6.0, 0.0, 6.0, 0, 0)),
        ("llama-8b", (5.0, 0.0, 0.5, 5.5, 0, 0)),  # ft-a trained it; the evaluation asked it
        ("gpt-4o-mini", (1.5, 0.0, 0.0, 1.5, 0, 0)),
        ("acme/llama-8b-ft-a-dep-1", (0.0, 0.0, 0.25, 0.25, 0, 0)),
        ("acme/other", (0.0, 0.0, 0.0, 0.0, 1, 0)),
        ("llama-70b", (0.0, 0.0, 0.0, 0.0, 1, 0)),
    ]


def test_since_leaves_out_what_was_incurred_before_and_counts_deployment_hours_from_that_day(ledger):
    report = from_ledger(ledger, since=dt.date(2026, 11, 1), now=NOW)
    assert [j.job_id for j in report.jobs] == ["ft-a", "ft-c"]  # ftjob-b was billed on Oct 31
    dep_1 = next(d for d in report.deployments if d.deployment_id == "dep-1")
    assert (dep_1.started_at, dep_1.hours, dep_1.usd) == (at(1), 1.0, 2.0)
    assert report.total.total_usd == 17.75  # the same as November's group
    later = from_ledger(ledger, since=dt.date(2026, 11, 3), now=NOW)
    assert [d.deployment_id for d in later.deployments] == ["dep-2", "dep-3"]  # dep-1 stopped on Nov 1
    assert (later.total.total_usd, later.total.inference_usd, [j.job_id for j in later.jobs]) == (10.0, 0.0, ["ft-c"])


def test_a_bill_of_unknown_amount_is_counted_as_unknown_not_as_zero(ledger):
    report = from_ledger(ledger, now=NOW)
    ft_c = next(j for j in report.jobs if j.job_id == "ft-c")
    assert ft_c.billed_usd is None
    unknown = {u.name: u for u in report.unknown}
    assert unknown["ft-c"].kind == "training" and "no price known" in unknown["ft-c"].why
    assert report.total.unknown == 2


def test_a_deployment_without_an_hourly_price_is_unknown_with_its_hours(ledger):
    report = from_ledger(ledger, now=NOW)
    dep_3 = next(d for d in report.deployments if d.deployment_id == "dep-3")
    assert (dep_3.hours, dep_3.usd, dep_3.running) == (1.0, None, False)
    assert [(u.kind, u.name, u.why) for u in report.unknown if u.kind == "deployment"] == [
        ("deployment", "dep-3", "no hourly price recorded")]


def test_a_deployment_of_unknown_price_across_two_months_is_one_unknown_charge_of_the_total(ledger):
    ledger.clock.now = at(1, 1)
    ledger.save_deployment(deployment("together", "dep-4", "acme/other", "stopped", None,
                                      created_at=at(31, 23, month=10)))
    report = from_ledger(ledger, by="month", now=NOW)
    assert [(g.key, g.unknown) for g in report.groups] == [("2026-10", 1), ("2026-11", 3)]
    assert report.total.unknown == len(report.unknown) == 3


def test_a_running_deployment_is_flagged_and_counted_up_to_now(ledger):
    dep_2 = next(d for d in from_ledger(ledger, now=NOW).deployments if d.deployment_id == "dep-2")
    assert (dep_2.running, dep_2.stopped_at, dep_2.hours, dep_2.usd) == (True, None, 2.5, 10.0)
    later = next(d for d in from_ledger(ledger, now=at(3, 3)).deployments if d.deployment_id == "dep-2")
    assert (later.hours, later.usd) == (3.0, 12.0)


def test_a_stopped_deployment_is_counted_until_the_ledger_first_saw_it_stopped(ledger):
    dep_1 = next(d for d in from_ledger(ledger, now=NOW).deployments if d.deployment_id == "dep-1")
    assert (dep_1.started_at, dep_1.stopped_at, dep_1.running) == (at(31, 22, month=10), at(1, 1), False)
    assert (dep_1.hours, dep_1.usd) == (3.0, 6.0)


def test_estimate_vs_bill_takes_the_last_estimate_and_gives_the_error_in_percent(ledger):
    jobs = {j.job_id: j for j in from_ledger(ledger, now=NOW).jobs}
    ft_a, ftjob_b = jobs["ft-a"], jobs["ftjob-b"]
    assert (ft_a.estimate_usd, ft_a.estimate_low_usd, ft_a.estimate_high_usd) == (4.0, 3.5, 4.5)
    assert (ft_a.error_pct, ft_a.within_range) == (25.0, False)
    assert (ftjob_b.estimate_usd, ftjob_b.error_pct, ftjob_b.within_range) == (2.0, -25.0, True)


def test_a_job_without_an_estimate_or_a_known_bill_has_no_error(ledger):
    ft_c = next(j for j in from_ledger(ledger, now=NOW).jobs if j.job_id == "ft-c")
    assert (ft_c.estimate_usd, ft_c.error_pct, ft_c.within_range) == (None, None, None)


def test_the_report_agrees_with_the_tuned_models_own_costs(ledger):
    tuned = TunedModel(TogetherProvider(api_key="tgp_v1_testkeytestkey"), TUNED_A, ledger)
    in_report = next(j for j in from_ledger(ledger, now=NOW).jobs if j.job_id == tuned.job_id)
    assert job_spend(tuned.costs, tuned.provider, tuned.job_id) == in_report
    assert in_report.billed_usd == [c.usd for c in tuned.costs if c.kind == "billed"][-1]
    assert in_report.estimate_usd == [c.usd for c in tuned.costs if c.kind == "estimate"][-1]


def test_an_empty_ledger_reports_nothing_and_says_it_is_empty():
    report = from_ledger(Ledger(), now=NOW)
    assert report.empty and report.groups == [] and report.total.total_usd == 0.0


# -- JSON -------------------------------------------------------------------------------------------------

SCHEMA = {
    "top": {"schema_version", "by", "since", "now", "total", "groups", "jobs", "deployments", "inference", "unknown",
            "skipped"},
    "total": {"training_usd", "deployment_usd", "inference_usd", "total_usd", "unknown", "running"},
    "jobs": {"provider", "job_id", "model", "billed_usd", "billed_at", "authoritative", "basis", "estimate_usd",
             "estimate_low_usd", "estimate_high_usd", "error_pct", "within_range"},
    "deployments": {"provider", "deployment_id", "model", "job_id", "state", "usd_per_hour", "started_at",
                    "stopped_at", "running", "hours", "usd"},
    "inference": {"provider", "model", "job_id", "answers", "usd", "unknown"},
    "unknown": {"kind", "provider", "name", "why"},
}


def test_the_json_keeps_its_documented_schema(ledger):
    data = json.loads(from_ledger(ledger, by="month", since=dt.date(2026, 10, 1), now=NOW).model_dump_json())
    assert set(data) == SCHEMA["top"] and data["schema_version"] == 1
    assert (data["by"], data["since"]) == ("month", "2026-10-01")
    assert set(data["total"]) == SCHEMA["total"]
    assert all(set(g) == SCHEMA["total"] | {"key"} for g in data["groups"])
    for part in ("jobs", "deployments", "inference", "unknown"):
        assert data[part] and all(set(row) == SCHEMA[part] for row in data[part]), part
    documented = tuneproxy.spend.__doc__ or ""
    assert all(f'"{name}"' in documented for names in SCHEMA.values() for name in names)


def test_the_evaluation_answers_are_summed_per_model_with_their_job(ledger):
    rows = [(i.provider, i.model, i.job_id, i.answers, i.usd) for i in from_ledger(ledger, now=NOW).inference]
    assert rows == [("together", "acme/llama-8b-ft-a-dep-1", "ft-a", 1, 0.25), ("together", "llama-8b", None, 1, 0.5)]


# -- the table --------------------------------------------------------------------------------------------

def test_the_table_fits_80_columns_even_on_a_wide_terminal(ledger):
    for number in range(3):  # long job ids, and five-figure sums
        ledger.record_billed(job("together", f"ft-{'0123456789abcdef' * 3}-{number}", "a-rather-long/model-name",
                                 None), usd=12_345.67, basis="big")
    out = io.StringIO()
    for by in ("provider", "job", "month", "model"):
        Console(file=out, width=200).print(spend_table(from_ledger(ledger, by=by, now=NOW)))
    widths = [len(line) for line in out.getvalue().splitlines()]
    assert max(widths) <= 80 and "$37,037.01" in out.getvalue()


# -- the command ------------------------------------------------------------------------------------------



def test_costs_on_an_empty_ledger_says_so_and_what_to_run(capsys):
    code, out, err = run_cli(capsys, "costs")
    assert code == 0 and err == ""
    assert out.startswith("No costs recorded yet.") and "tuneproxy fit" in out and "tuneproxy eval" in out


def test_costs_prints_the_groups_the_estimates_and_what_is_still_billing(capsys, ledger):
    code, out, _ = run_cli(capsys, "costs")
    assert code == 0
    assert max(len(line) for line in out.splitlines()) <= 80
    openai_row = next(line for line in out.splitlines() if "openai" in line)
    assert re.search(r"\$1\.50 .*-.*-.*\$1\.50", openai_row)
    assert re.search(r"fireworks \*", out)  # dep-2 is running
    ft_a_row = next(line for line in out.splitlines() if "ft-a" in line)
    assert "$4.00" in ft_a_row and "$3.50–$4.50" in ft_a_row and "$5.00" in ft_a_row and "+25.0%" in ft_a_row
    text = " ".join(out.split())
    assert "Deployment dep-2 on fireworks is still billing ($4.00/hour)" in text
    assert "2 charges are of unknown amount, not counted in the sums: training ft-c, deployment dep-3" in text


def test_a_group_of_only_unknown_charges_shows_unknown_not_zero(capsys, ledger):
    code, out, _ = run_cli(capsys, "costs", "--by", "job")
    ft_c_row = next(line for line in out.splitlines() if "ft-c" in line)  # the first: the groups' table
    assert code == 0 and "unknown" in ft_c_row and "$0.00" not in ft_c_row


def test_costs_json_is_the_report(capsys, ledger):
    code, out, _ = run_cli(capsys, "costs", "--json", "--by", "job", "--since", "2026-10-31")
    data = json.loads(out)
    assert code == 0 and (data["by"], data["since"]) == ("job", "2026-10-31")
    assert {g["key"]: g["training_usd"] for g in data["groups"]} == {"ft-a": 5.0, None: 0.0, "ftjob-b": 1.5,
                                                                     "ft-c": 0.0}
    assert [d["deployment_id"] for d in data["deployments"] if d["running"]] == ["dep-2"]


def test_costs_since_a_day_with_nothing_says_so(capsys, ledger):
    code, out, _ = run_cli(capsys, "costs", "--since", "2027-01-01")
    assert code == 0 and out.startswith("No costs incurred since 2027-01-01")


@pytest.mark.parametrize(("args", "message"), [(("--by", "week"), "--by"), (("--since", "yesterday"), "--since"),
                                               (("--since", "2026-02-30"), "--since")])
def test_costs_with_a_bad_option_is_a_usage_error(capsys, args, message):
    code, _, err = run_cli(capsys, "costs", *args)
    assert code == 2 and message in err and "Traceback" not in err


def test_a_cost_row_that_cannot_be_read_is_one_warning_line_and_the_rest_is_reported(capsys, ledger):
    ledger.db.execute("INSERT INTO costs (recorded_at, provider, job_id, kind, usd, basis) VALUES "
                      "('not a time', 'together', 'ft-x', 'billed', 'a lot', 'by hand')")
    bad = ledger.db.execute("SELECT max(id) FROM costs").fetchone()[0]
    code, out, err = run_cli(capsys, "costs", "--json")
    assert code == 0 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and f"costs {bad}" in err and f"DELETE FROM costs WHERE id = {bad}" in err
    data = json.loads(out)
    assert data["total"]["training_usd"] == 6.5
    assert [(s["table"], s["name"]) for s in data["skipped"]] == [("costs", str(bad))]


def test_a_deployment_row_that_cannot_be_read_leaves_the_others_counted(capsys, ledger):
    db = sqlite3.connect(ledger.path)
    db.execute("UPDATE deployments SET created_at = 'last week' WHERE deployment_id = 'dep-1'")
    db.commit()
    db.close()
    code, out, err = run_cli(capsys, "costs")
    assert code == 0 and "dep-1" in err and "internal error" not in err
    assert "dep-2" in out and "$1.50" in out
