"""What only Fireworks does, through the real fireworks-ai SDK replaying cassettes (no network, no sleeps).

The behaviour every backend shares (lifecycle, retries, lost creates, keys, attach) is the contract suite's:
tests/contract/test_provider_contract.py.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.contract.cases import FIREWORKS, HappyRun, paths, run_happy_path, sent, training_file
from tuneproxy.contract import Deployable, JobStatus, Quantity, Stats, UnknownStatusWarning
from tuneproxy.costs import bill_for, price_estimate
from tuneproxy.errors import ConfigError, DatasetError, ProviderError, ReplayMismatch
from tuneproxy.providers.fireworks import (
    DIRECT_UPLOAD_LIMIT,
    FireworksProvider,
    MetricsWarning,
    dataset_id_for,
    fireworks_id,
    metric_points,
    money_usd,
)
from tuneproxy.recording import (
    Interaction,
    JsonBody,
    RecordedRequest,
    RecordedResponse,
    ReplayTransport,
    TextBody,
    library_of,
)

JOB = FIREWORKS.job_id
SPEC = FIREWORKS.spec()
ACCOUNT = "/v1/accounts/acme"
FIREWORKS_ID = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def provider(transport: Any = None, waits: list[float] | None = None, **options: Any) -> FireworksProvider:
    p = FIREWORKS.provider(transport, waits=waits, **options)
    assert isinstance(p, FireworksProvider)
    return p




def happy_interactions() -> list[Interaction]:
    return FIREWORKS.cassette("happy_path").interactions


def answered(interaction: Interaction, http_status: int = 200, json: Any = None, **changes: Any) -> Interaction:
    """``interaction`` answered ``http_status`` with ``json`` (default: its own body with ``changes``)."""
    body = interaction.response.body
    assert isinstance(body, JsonBody)
    payload = json if json is not None else {**body.json_, **changes}
    response = RecordedResponse(status=http_status, headers={"content-type": "application/json"},
                                body=JsonBody(json=payload))
    return interaction.model_copy(update={"response": response})


@pytest.fixture
def happy(tmp_path: Path) -> HappyRun:
    """The contract's happy path, run once through the strict SDK; tests look at Fireworks' own details."""
    return run_happy_path(FIREWORKS, tmp_path)


# --------------------------------------------------------------------------- options and account


def test_a_missing_account_id_names_the_variable_before_any_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FIREWORKS_ACCOUNT_ID", raising=False)
    transport = FIREWORKS.replay("rate_limited")
    p = FireworksProvider({}, api_key=FIREWORKS.key, transport=transport)
    with pytest.raises(ConfigError, match="FIREWORKS_ACCOUNT_ID"):
        p.refresh(JOB)
    assert transport.log == []


def test_the_account_id_comes_from_the_environment_without_the_option(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIREWORKS_ACCOUNT_ID", "acme")
    _, running = FIREWORKS.cassette("rate_limited").interactions
    transport = FIREWORKS.scripted([running])
    record = FireworksProvider({}, api_key=FIREWORKS.key, transport=transport).refresh(JOB)
    assert record.status is JobStatus.RUNNING
    assert paths(transport) == [("GET", f"{ACCOUNT}/supervisedFineTuningJobs/{JOB}")]


def test_the_sdk_retries_nothing_itself() -> None:
    """The SDK retries 409 and every POST by default; a retried create could make a second job."""
    assert provider(FIREWORKS.replay("happy_path")).client.max_retries == 0


def test_a_create_answered_409_is_sent_once_and_refused() -> None:
    create = FIREWORKS.cassette("failed_validation").interactions[0]
    transport = FIREWORKS.scripted([answered(create, 409, {"code": 6, "message": "job already exists"})])
    with pytest.raises(ProviderError) as caught:
        provider(transport).submit(SPEC)
    assert caught.value.status_code == 409 and len(transport.log) == 1


# --------------------------------------------------------------------------- upload


def test_upload_creates_the_dataset_with_its_example_count_then_one_multipart_upload_then_reads_it(
    happy: HappyRun
) -> None:
    dataset_id = happy.upload.id.rsplit("/", 1)[-1]
    assert paths(happy.transport)[:3] == [
        ("POST", f"{ACCOUNT}/datasets"),
        ("POST", f"{ACCOUNT}/datasets/{dataset_id}:upload"),
        ("GET", f"{ACCOUNT}/datasets/{dataset_id}"),
    ]
    assert sent(happy.transport, "POST", f"{ACCOUNT}/datasets") == {
        "datasetId": dataset_id, "dataset": {"userUploaded": {}, "exampleCount": "10"}}
    multipart = happy.transport.log[1].body.multipart  # type: ignore[union-attr]
    assert [(f.name, f.filename) for f in multipart.files] == [("file", "train.jsonl")]
    assert happy.upload.id == f"accounts/acme/datasets/{dataset_id}"


@pytest.mark.parametrize("filename", ["train.jsonl", "My Support_Tickets (v2).JSONL", "-.jsonl", "x" * 200 + ".jsonl"])
def test_dataset_ids_obey_fireworks_id_rules(filename: str) -> None:
    dataset_id = dataset_id_for(filename, b'{"messages": []}\n')
    assert FIREWORKS_ID.fullmatch(dataset_id) and len(dataset_id) <= 63


def test_the_same_bytes_give_the_same_dataset_id_and_other_bytes_another() -> None:
    assert dataset_id_for("a.jsonl", b"1\n") == dataset_id_for("a.jsonl", b"1\n") != dataset_id_for("a.jsonl", b"2\n")


@pytest.mark.parametrize(("text", "made"), [
    ("Support Bot!-tp8f14e45fce", "support-bot-tp8f14e45fce"),
    ("-a-", "a"),
    ("a" * 100 + "-tp8f14e45fce", "a" * 50 + "-tp8f14e45fce"),  # 63 characters, the tag kept
])
def test_fireworks_id_keeps_the_end_and_obeys_the_rules(text: str, made: str) -> None:
    assert fireworks_id(text) == made and FIREWORKS_ID.fullmatch(made)


def test_a_file_over_the_150_mb_direct_upload_limit_is_refused_naming_it_before_any_request(tmp_path: Path) -> None:
    big = tmp_path / "big.jsonl"
    with big.open("wb") as handle:
        handle.truncate(DIRECT_UPLOAD_LIMIT + 1)
    transport = FIREWORKS.replay("unauthorized")
    with pytest.raises(DatasetError, match="150 MB"):
        provider(transport).upload(big)
    assert transport.log == []


def test_a_dataset_still_uploading_is_read_again_after_the_poll_interval(tmp_path: Path) -> None:
    create, upload, ready = happy_interactions()[:3]
    uploading = answered(ready, state="UPLOADING")
    transport, waits = FIREWORKS.scripted([create, upload, uploading, ready]), []
    uploaded = provider(transport, waits=waits, upload_poll_seconds=5).upload(training_file(tmp_path))
    transport.assert_all_played()
    assert waits == [5] and uploaded.id.startswith("accounts/acme/datasets/")


def test_a_dataset_stuck_uploading_is_a_provider_error_after_the_bounded_checks(tmp_path: Path) -> None:
    create, upload, ready = happy_interactions()[:3]
    uploading = answered(ready, state="UPLOADING")
    transport, waits = FIREWORKS.scripted([create, upload, uploading, uploading]), []
    with pytest.raises(ProviderError, match="still UPLOADING after 2 checks") as caught:
        provider(transport, waits=waits, upload_poll_attempts=2).upload(training_file(tmp_path))
    transport.assert_all_played()
    assert waits == [2.0]
    # what to do: check it, rerun once it is ready (reused), or wait longer
    message = str(caught.value)
    assert "no job was created" in message and "firectl get dataset tp-train-cf7bf2d5415e" in message
    assert "run the same command again" in message and "-o upload_poll_attempts=" in message
    assert caught.value.exit_code == 3


def test_a_dataset_fireworks_refuses_is_an_error_with_its_message(tmp_path: Path) -> None:
    create, upload, ready = happy_interactions()[:3]
    refused = answered(ready, state="UPLOADING", status={"code": "INVALID_ARGUMENT", "message": "line 2 is not JSON"})
    transport = FIREWORKS.scripted([create, upload, refused])
    with pytest.raises(ProviderError, match="line 2 is not JSON"):
        provider(transport).upload(training_file(tmp_path))


def test_a_dataset_that_already_exists_and_is_ready_is_reused_without_uploading_again(tmp_path: Path) -> None:
    create, _, ready = happy_interactions()[:3]
    exists = answered(create, 409, {"code": 6, "message": "dataset already exists"})
    transport = FIREWORKS.scripted([exists, ready])
    uploaded = provider(transport).upload(training_file(tmp_path))
    transport.assert_all_played()
    assert [method for method, _ in paths(transport)] == ["POST", "GET"] and uploaded.id.endswith("cf7bf2d5415e")


# --------------------------------------------------------------------------- jobs


def test_the_create_sends_fireworks_names_and_carries_the_intent_tag_in_the_display_name(happy: HappyRun) -> None:
    body = sent(happy.transport, "POST", f"{ACCOUNT}/supervisedFineTuningJobs")
    assert body == {
        "dataset": happy.upload.id, "baseModel": "accounts/fireworks/models/qwen3-8b", "epochs": 2,
        "learningRate": 0.0001, "loraRank": 16, "maxContextLength": 8192, "batchSizeSamples": 32,
        "displayName": "tuneproxy-tp8f14e45fce", "outputModel": "support-bot-tp8f14e45fce",
    }


def test_a_dataset_given_by_id_is_sent_by_its_full_name() -> None:
    spec = SPEC.model_copy(update={"training_file": "tp-train-cf7bf2d5415e"})
    assert provider().create_arguments(spec)["dataset"] == "accounts/acme/datasets/tp-train-cf7bf2d5415e"


def test_find_job_matches_the_intent_tag_in_the_display_name_and_nothing_else() -> None:
    transport = FIREWORKS.scripted(FIREWORKS.cassette("lost_create").interactions[1:])
    assert provider(transport).find_job("00000000-0000-0000-0000-000000000000") is None


@pytest.mark.parametrize("output_model", ["support-bot-tp8f14e45fce", "accounts/acme/models/support-bot-tp8f14e45fce"])
def test_the_output_model_as_bare_id_or_full_name_becomes_the_full_name(output_model: str) -> None:
    done = happy_interactions()[6]
    transport = FIREWORKS.scripted([answered(done, outputModel=output_model)])
    assert provider(transport).refresh(JOB).tuned_model == "accounts/acme/models/support-bot-tp8f14e45fce"


def test_cancel_posts_cancel_with_an_empty_body_then_reads_the_job() -> None:
    transport = FIREWORKS.replay("cancelled")
    p = provider(transport)
    p.submit(SPEC)
    requested = p.cancel(JOB)
    assert paths(transport)[1:] == [("POST", f"{ACCOUNT}/supervisedFineTuningJobs/{JOB}:cancel"),
                                    ("GET", f"{ACCOUNT}/supervisedFineTuningJobs/{JOB}")]
    assert sent(transport, "POST", f"{ACCOUNT}/supervisedFineTuningJobs/{JOB}:cancel") == {}
    assert requested.raw_status == "JOB_STATE_CANCELLING" and requested.status is JobStatus.RUNNING


def test_every_state_the_sdk_and_the_api_document_is_mapped_or_deliberately_unmapped() -> None:
    from typing import get_args

    from fireworks.types.supervised_fine_tuning_job import SupervisedFineTuningJob

    (literal, _) = get_args(SupervisedFineTuningJob.model_fields["state"].annotation)
    documented = set(get_args(literal)) | {"JOB_STATE_DELETED", "JOB_STATE_ARCHIVED"}
    assert len(documented) == 20
    assert documented == set(FireworksProvider.STATUS_MAP) | FireworksProvider.DOCUMENTED_UNMAPPED
    assert not set(FireworksProvider.STATUS_MAP) & FireworksProvider.DOCUMENTED_UNMAPPED


def test_events_are_read_off_the_job_with_ids_naming_what_they_say(happy: HappyRun) -> None:
    assert [e.id for e in happy.events] == ["created", "state-JOB_STATE_RUNNING-epoch0-40pct"]
    assert happy.events[1].epoch == 0 and happy.events[1].message == "State running (40% done, epoch 0)"


def test_a_failed_job_s_events_end_in_an_error_with_the_service_message() -> None:
    _, failed = FIREWORKS.cassette("failed_validation").interactions
    last = provider(FIREWORKS.scripted([failed])).events(JOB)[-1]
    assert last.level == "error" and FIREWORKS.failure_message in last.message


# --------------------------------------------------------------------------- training metrics

METRICS_URL = ("https://storage.googleapis.com/fw-artifacts/acme/sftj/k3v9q2xz7m1p/metrics.jsonl?"
               "X-Goog-Expires=3600&X-Goog-Signature=REDACTED")


def jsonl(*rows: dict[str, Any]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def job_read(state: str = "JOB_STATE_RUNNING", percent: int = 40, epoch: int = 0) -> Interaction:
    """A read of the job, with its metrics file's signed URL."""
    return answered(happy_interactions()[4], state=state, jobProgress={"percent": percent, "epoch": epoch},
                    metricsFileSignedUrl=METRICS_URL)


def metrics_file(text: str, status: int = 200) -> Interaction:
    return Interaction(request=RecordedRequest(method="GET", url=METRICS_URL),
                       response=RecordedResponse(status=status, headers={"content-type": "text/plain"},
                                                 body=TextBody(text=text)))


def train_rows(*steps: int) -> list[dict[str, Any]]:
    return [{"step": step, "train/step": step, "train/loss": round(2.0 / step, 4), "train/lr": 0.0001}
            for step in steps]


FLAT = jsonl({"step": 1, "train/step": 1, "train/loss": 1.5, "train/lr": 0.0001, "train/total_tokens": 700},
             {"step": 2, "train/step": 2, "train/loss": 1.2, "train/lr": 0.0001}, {"step": 2, "eval/loss": 0.9})
NESTED = jsonl({"timestamp": 1795867500.5, "step": 1, "data": {"train/epoch": 0, "train/loss": 1.5}},
               {"timestamp": 1795867520.0, "step": 2, "data": {"train/epoch": 0, "train/loss": 1.2}},
               {"timestamp": 1795867530.0, "step": 2, "data": {"eval/loss": 0.9}})
ARRAY = json.dumps([{"step": 1, "loss": 1.5}, {"step": 2, "loss": 1.2, "eval_loss": 0.9}])
CSV = "step,train/loss,eval/loss\n1,1.5,\n2,1.2,0.9\n"


@pytest.mark.parametrize("text", [FLAT, NESTED, ARRAY, CSV], ids=["flat", "nested", "array", "csv"])
def test_the_metrics_file_is_read_in_every_shape_seen_or_plausible(text: str) -> None:
    points = metric_points(text)
    assert [(p.step, p.train_loss, p.valid_loss) for p in points.values()] == [(1, 1.5, None), (2, 1.2, 0.9)]


def test_a_metrics_row_s_own_timestamp_and_epoch_are_kept() -> None:
    first = metric_points(NESTED)[1]
    assert first.epoch == 0 and first.time == dt.datetime(2026, 11, 28, 12, 5, 0, 500000, tzinfo=dt.timezone.utc)
    iso = metric_points(jsonl({"step": 1, "loss": 1.0, "timestamp": "2026-11-28T12:05:00Z"},
                              {"step": 2, "loss": 0.9, "timestamp": "yesterday"}))
    assert iso[1].time == dt.datetime(2026, 11, 28, 12, 5, tzinfo=dt.timezone.utc) and iso[2].time is None


def test_rows_without_a_step_or_a_finite_loss_and_lines_that_are_not_json_are_left_out() -> None:
    rows = [{"step": 3, "train/loss": "0.75"}, {"step": 4, "train/loss": float("nan")}, {"train/loss": 0.5},
            {"step": 5, "train/lr": 0.1}, {"step": -1, "loss": 2.0}, {"step": 6, "train/loss": True}, [1, 2]]
    text = "not json at all\n" + "\n".join(json.dumps(row) for row in rows) + "\n\n"
    assert {step: point.train_loss for step, point in metric_points(text).items()} == {3: 0.75}
    assert metric_points("") == {} and metric_points("\x00\x01 binary") == {} and metric_points("[1, 2") == {}


def test_each_final_step_of_the_metrics_file_is_an_event_and_the_last_waits_while_the_job_runs() -> None:
    rows = train_rows(9, 18, 27)
    transport = FIREWORKS.scripted([job_read(), metrics_file(jsonl(*rows)),
                                    job_read("JOB_STATE_COMPLETED", 100, 1), metrics_file(jsonl(*rows))])
    p = provider(transport)
    running = p.events(JOB)
    # step 27 may still gain its evaluation row: it waits for a later step or the end of the job
    assert [e.id for e in running] == ["created", "metrics-9", "metrics-18",
                                       "state-JOB_STATE_RUNNING-epoch0-40pct-step18"]
    assert (running[1].step, running[1].train_loss, running[1].message) == (9, 0.2222, "Step 9: training loss=0.2222")
    assert running[-1].step == 18 and running[-1].message == "State running (40% done, epoch 0, step 18)"
    done = p.events(JOB)
    assert [e.id for e in done if e.train_loss is not None] == ["metrics-9", "metrics-18", "metrics-27"]
    assert done[-1].id == "state-JOB_STATE_COMPLETED-epoch1-100pct-step27"
    transport.assert_all_played()


def test_new_steps_under_an_unchanged_state_are_not_lost_to_the_events_cursor() -> None:
    """The status event names the latest step, so new steps make a new last event: reading after the previous
    last one can never skip what came before it."""
    transport = FIREWORKS.scripted([job_read(), metrics_file(jsonl(*train_rows(9, 18, 27))),
                                    job_read(), metrics_file(jsonl(*train_rows(9, 18, 27, 36, 45)))])
    p = provider(transport)
    first = p.events(JOB)
    again = p.events(JOB, after=first[-1].id)  # the ledger's cursor: the last event it stored
    seen = {e.id for e in first} | {e.id for e in again}
    assert {f"metrics-{step}" for step in (9, 18, 27, 36)} <= seen and "metrics-45" not in seen
    assert again[-1].id == "state-JOB_STATE_RUNNING-epoch0-40pct-step36"


def test_the_metrics_file_is_fetched_on_the_provider_transport_without_the_api_key_and_only_for_events() -> None:
    transport = FIREWORKS.scripted([job_read(), job_read(), metrics_file(jsonl(*train_rows(9, 18)))])
    p = provider(transport)
    p.refresh(JOB)  # a job read alone never fetches the file
    p.events(JOB)
    transport.assert_all_played()
    job, _, fetched = transport.log
    assert urlsplit(fetched.url).netloc == "storage.googleapis.com"
    assert job.headers["authorization"] == "Bearer REDACTED" and "authorization" not in fetched.headers


def test_a_metrics_file_that_cannot_be_fetched_is_a_warning_and_the_job_is_still_read() -> None:
    denied = metrics_file('<?xml version="1.0"?><Error><Code>ExpiredToken</Code></Error>', 400)
    transport = FIREWORKS.scripted([job_read(), denied])
    with pytest.warns(MetricsWarning, match="HTTP 400") as caught:
        found = provider(transport).events(JOB)
    assert [e.id for e in found] == ["created", "state-JOB_STATE_RUNNING-epoch0-40pct"]
    assert "X-Goog" not in str(caught[0].message)  # the signed part of the URL is never shown


def test_a_metrics_file_lost_on_the_network_is_a_warning_and_the_job_is_still_read() -> None:
    class Unreachable(ReplayTransport):
        def _exchange(self, request: Any) -> Any:
            if request.url.host == "storage.googleapis.com":
                raise library_of(request).ConnectError("connection reset", request=request)
            return super()._exchange(request)

    transport = Unreachable(FIREWORKS.scripted([job_read()]).cassette)
    with pytest.warns(MetricsWarning, match="ConnectError"):
        found = provider(transport).events(JOB)
    assert found[-1].id == "state-JOB_STATE_RUNNING-epoch0-40pct"


def test_a_metrics_file_that_is_not_a_metrics_file_gives_no_points_and_no_error() -> None:
    transport = FIREWORKS.scripted([job_read("JOB_STATE_COMPLETED", 100, 1), metrics_file("<html>maintenance</html>")])
    found = provider(transport).events(JOB)
    assert [e.id for e in found] == ["created", "state-JOB_STATE_COMPLETED-epoch1-100pct"]


def test_a_metrics_request_the_cassette_does_not_hold_is_a_replay_mismatch_not_a_warning() -> None:
    elsewhere = metrics_file(jsonl(*train_rows(9)))
    elsewhere = elsewhere.model_copy(update={"request": elsewhere.request.model_copy(
        update={"url": "https://storage.googleapis.com/other/metrics.jsonl"})})
    with pytest.raises(ReplayMismatch, match="does not match the cassette"):
        provider(FIREWORKS.scripted([job_read(), elsewhere])).events(JOB)


# --------------------------------------------------------------------------- cost


@pytest.mark.parametrize(("units", "nanos", "currency", "usd"), [
    ("3", 150_000_000, "USD", 3.15),
    ("0", 500_000_000, "USD", 0.5),
    (None, 250_000_000, None, 0.25),
    ("12", None, "USD", 12.0),
    ("3", 0, "EUR", None),
    (None, None, "USD", None),
])
def test_money_is_units_plus_nanos_in_us_dollars(units: str | None, nanos: int | None, currency: str | None,
                                                 usd: float | None) -> None:
    from fireworks.types.supervised_fine_tuning_job import EstimatedCost

    money = EstimatedCost.model_validate({"units": units, "nanos": nanos, "currencyCode": currency})
    assert money_usd(money) == (pytest.approx(usd) if usd is not None else None)


def test_a_completed_job_bills_its_estimated_cost(happy: HappyRun) -> None:
    done = happy.records[-1]
    assert done.billed_usd == pytest.approx(3.15)
    assert done.billable == [Quantity(kind="training_tokens", amount=2000)]
    bill = bill_for(happy.provider, done)
    assert bill is not None and bill.authoritative and bill.usd == pytest.approx(3.15)


def test_a_running_job_states_its_estimate_but_no_bill_yet() -> None:
    running = happy_interactions()[4]
    transport = FIREWORKS.scripted([answered(running, estimatedCost={"currencyCode": "USD", "units": "1", "nanos": 0})])
    record = provider(transport).refresh(JOB)
    assert record.billed_usd is None and record.detail["estimated_usd"] == 1.0


def test_the_estimate_is_tokens_times_epochs_priced_by_the_size_band() -> None:
    p = provider()
    stats = Stats(examples=10, total_tokens=100_000)
    estimate = p.estimate(stats, SPEC)
    assert estimate.quantities == [Quantity(kind="training_tokens", amount=200_000)] and not estimate.authoritative
    assert price_estimate(p, estimate, stats).usd == pytest.approx(200_000 * 0.50 / 1_000_000)  # 8B: up to 16B


# --------------------------------------------------------------------------- inference


def test_a_tuned_model_on_its_deployment_is_asked_by_model_hash_deployment() -> None:
    chat = happy_interactions()[7]
    served = "accounts/acme/models/support-bot-tp8f14e45fce#accounts/acme/deployments/support-bot"
    any_body = chat.request.model_copy(update={"body": None})
    transport = FIREWORKS.scripted([chat.model_copy(update={"request": any_body})])
    completion = provider(transport).endpoint(served).complete([{"role": "user", "content": "hi"}])
    (request,) = transport.log
    assert isinstance(request.body, JsonBody) and request.body.json_["model"] == served
    assert completion.text == "2 plus 2 is 4." and completion.cost_usd is None  # a deployment bills by the hour



# --------------------------------------------------------------------------- paid deployments


DEPLOYMENT = "accounts/acme/deployments/support-bot-tp8f14e45fce"
TUNED = "accounts/acme/models/support-bot-tp8f14e45fce"


def deploy_interactions() -> list[Interaction]:
    return FIREWORKS.cassette("deploy_happy_path").interactions


def test_fireworks_is_deployable() -> None:
    assert isinstance(provider(), Deployable)


def test_deploy_creates_one_replica_of_the_lora_named_by_the_model_and_prices_the_hour() -> None:
    transport = FIREWORKS.scripted(deploy_interactions()[:1])
    created = provider(transport).deploy("support-bot-tp8f14e45fce", hardware="NVIDIA_H100_80GB")
    (request,) = transport.log
    assert urlsplit(request.url).query == "deploymentId=support-bot-tp8f14e45fce"
    assert isinstance(request.body, JsonBody) and request.body.json_ == {
        "baseModel": TUNED, "acceleratorType": "NVIDIA_H100_80GB", "acceleratorCount": 1,
        "minReplicaCount": 1, "maxReplicaCount": 1}
    assert (created.deployment_id, created.model, created.state) == (DEPLOYMENT, TUNED, "creating")
    assert created.serving_model == f"{TUNED}#{DEPLOYMENT}"
    assert created.usd_per_hour == pytest.approx(5.8)  # the catalogue's H100 hour


def test_a_deployed_model_answers_on_model_hash_deployment_and_undeploy_stops_its_bill() -> None:
    transport = FIREWORKS.replay("deploy_happy_path")
    p = provider(transport)
    created = p.deploy(TUNED, hardware="NVIDIA_H100_80GB")
    ready = p.deployment(created.deployment_id)
    assert ready.state == "ready" and ready.serving_model
    completion = p.endpoint(ready.serving_model).complete([{"role": "user", "content": "What is 2 plus 2?"}])
    stopped = p.undeploy(created.deployment_id)
    transport.assert_all_played()
    assert completion.text == "2 plus 2 is 4."
    assert (stopped.state, stopped.raw_state) == ("stopped", "DELETED")
    assert paths(transport)[-2:] == [("DELETE", f"/v1/{DEPLOYMENT}"), ("GET", f"/v1/{DEPLOYMENT}")]


def test_a_deployment_is_read_by_its_full_name_with_no_account_option(monkeypatch: pytest.MonkeyPatch) -> None:
    """How `tuneproxy deployments show|delete` reads one: the provider is built with no option at all."""
    monkeypatch.delenv("FIREWORKS_ACCOUNT_ID", raising=False)
    transport = FIREWORKS.scripted(deploy_interactions()[1:2])
    p = FireworksProvider({}, api_key=FIREWORKS.key, transport=transport)
    assert p.deployment(DEPLOYMENT).state == "ready"


def test_a_deploy_whose_answer_is_lost_is_looked_up_by_the_id_it_would_have() -> None:
    create, ready = deploy_interactions()[:2]
    transport = FIREWORKS.scripted([answered(create, 504, {"code": 4, "message": "deadline exceeded"}), ready])
    found = provider(transport).deploy(TUNED, hardware="NVIDIA_H100_80GB")
    transport.assert_all_played()
    assert found.deployment_id == DEPLOYMENT and len(transport.requests("POST")) == 1


def test_a_deploy_refused_with_a_4xx_is_not_looked_up() -> None:
    create = deploy_interactions()[0]
    transport = FIREWORKS.scripted([answered(create, 409, {"code": 6, "message": "deployment already exists"})])
    with pytest.raises(ProviderError, match="already exists") as caught:
        provider(transport).deploy(TUNED, hardware="NVIDIA_H100_80GB")
    assert "may still have been created" not in str(caught.value)
    transport.assert_all_played()


@pytest.mark.parametrize(("raw", "state"), [
    ("CREATING", "creating"), ("READY", "ready"), ("UPDATING", "ready"), ("DELETING", "stopping"),
    ("DELETED", "stopped"), ("FAILED", "failed"),
])
def test_deployment_states_are_mapped(raw: str, state: str) -> None:
    transport = FIREWORKS.scripted([answered(deploy_interactions()[1], state=raw)])
    assert provider(transport).deployment(DEPLOYMENT).state == state


def test_every_documented_deployment_state_but_unspecified_is_mapped() -> None:
    from typing import get_args

    from fireworks.types.deployment import Deployment as SDKDeployment

    (literal, _) = get_args(SDKDeployment.model_fields["state"].annotation)
    assert set(get_args(literal)) - set(FireworksProvider.DEPLOYMENT_STATE_MAP) == {"STATE_UNSPECIFIED"}


def test_an_unspecified_deployment_state_is_unknown_with_a_warning() -> None:
    transport = FIREWORKS.scripted([answered(deploy_interactions()[1], state="STATE_UNSPECIFIED")])
    with pytest.warns(UnknownStatusWarning):
        assert provider(transport).deployment(DEPLOYMENT).state == "unknown"


def test_a_deployment_id_that_is_not_a_fireworks_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="accounts/<account>/deployments/<id>"):
        provider().deployment("projects/p/endpoints/e/deployments/d")


def test_a_deploy_lost_and_not_found_says_how_to_check_and_remove_it() -> None:
    create, ready = deploy_interactions()[:2]
    missing = answered(ready, 404, {"code": 5, "message": "not found"})
    transport = FIREWORKS.scripted([answered(create, 504, {"code": 4, "message": "deadline exceeded"}), missing])
    with pytest.raises(ProviderError, match="firectl delete deployment support-bot-tp8f14e45fce"):
        provider(transport).deploy(TUNED, hardware="NVIDIA_H100_80GB")
    assert len(transport.requests("POST")) == 1
