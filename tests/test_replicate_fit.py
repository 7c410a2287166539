"""What only ``fit`` on Replicate shows, replayed from Tuner-level cassettes through the real replicate SDK: the
trainer's losses, the validation input, the serving note, and each bad input a clear message with its exit code
and the ledger consistent. The same fit as on every service (bill, failure, lost create) is
tests/test_fit_end_to_end.py's."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from tests.cli_helpers import run_cli
from tests.contract.cases import REPLICATE
from tests.fit_helpers import CREATE, MODELS, SAMPLE, make_tuner
from tuneproxy import Ledger
from tuneproxy.recording import (
    Cassette,
    JsonBody,
    RecordedResponse,
    ReplayTransport,
    cassette_path,
)

pytestmark = [pytest.mark.filterwarnings("ignore::tuneproxy.tuner.DatasetWarning")]
QUESTION = [{"role": "user", "content": "Ticket: I was charged twice"}]
DESTINATION = "acme/support-bot"


@pytest.fixture(autouse=True)
def destination(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPLICATE_DESTINATION", DESTINATION)


def fit_cassette(scenario: str = "fit_happy_path") -> Cassette:
    return Cassette.load(cassette_path("replicate", scenario))




FIT_ARGS = ("fit", str(SAMPLE), "-p", "replicate", "-m", MODELS["replicate"], "--epochs", "3", "--batch-size", "8",
            "--seed", "42", "--holdout", "0.1", "--poll-interval", "0")


# --------------------------------------------------------------------------- the happy path


def test_the_trainers_losses_reach_the_tuned_model() -> None:
    tuned = make_tuner("replicate", ReplayTransport(cassette_path("replicate", "fit_happy_path"))).fit(
        SAMPLE, holdout=0.1)
    train = [m.train_loss for m in tuned.metrics if m.train_loss is not None]
    valid = [m.valid_loss for m in tuned.metrics if m.valid_loss is not None]
    assert train == [1.3521, 0.7316, 0.4108, 0.3012] and valid == [0.7702, 0.5239, 0.4871]


def test_the_fit_result_says_what_serving_costs_beyond_the_requests(capsys: pytest.CaptureFixture[str],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEPROXY_CASSETTE", str(cassette_path("replicate", "fit_happy_path")))
    monkeypatch.setenv("REPLICATE_API_TOKEN", "test-key")
    code, out, err = run_cli(capsys, *FIT_ARGS, "--json")
    assert code == 0, err
    done = json.loads(out)
    assert done["status"] == "succeeded" and "idles" in done["serving_note"]
    assert done["costs"][-1]["kind"] == "billed" and "test-key" not in out + err


def test_the_validation_file_goes_to_the_trainers_validation_input() -> None:
    transport = ReplayTransport(cassette_path("replicate", "fit_happy_path"))
    make_tuner("replicate", transport).fit(SAMPLE, holdout=0.1)
    (create,) = transport.requests("POST", CREATE["replicate"])
    assert isinstance(create.body, JsonBody)
    training_input = create.body.json_["input"]
    uploads = [r for r in transport.log if r.method == "POST" and r.url.endswith("/v1/files")]
    assert len(uploads) == 2
    assert training_input["validation_data"].startswith("https://api.replicate.com/v1/files/")
    assert "#tp" in training_input["train_data"] and "#" not in training_input["validation_data"]


# --------------------------------------------------------------------------- failure and a lost create


def scripted_until_create(tmp_path: Path, answer: RecordedResponse) -> Path:
    """The happy fit's requests up to the destination read (``answer`` replaces what comes next: the
    destination read itself for a 404 there, else the create)."""
    cassette = fit_cassette()
    interactions = cassette.interactions
    at = 2 if answer.status == 404 and "destination" in str(answer.body) else 3
    interactions = [*interactions[:at], interactions[at].model_copy(update={"response": answer})]
    path = tmp_path / "scripted.json"
    path.write_text(cassette.model_copy(update={"interactions": interactions}).model_dump_json(by_alias=True))
    return path


def submissions() -> list[tuple[str, str | None]]:
    """(state, error) of every submission in the ledger, read straight from its SQLite file."""
    with closing(sqlite3.connect(Ledger().path)) as db:
        return db.execute("SELECT state, error FROM submissions").fetchall()


def problem(status: int, detail: str) -> RecordedResponse:
    return RecordedResponse(status=status, headers={"content-type": "application/problem+json"},
                            body=JsonBody(json={"title": "Not found", "detail": detail, "status": status}))


@pytest.mark.parametrize(("answer", "said"), [
    (problem(404, "The requested destination model could not be found."),
     f"The destination model {DESTINATION} does not exist on Replicate"),
    (problem(404, "The requested resource could not be found."),
     "Replicate has no trainer meta/llama-2-7b:"),
], ids=["missing destination", "unknown trainer version"])
def test_a_bad_destination_or_trainer_is_exit_3_and_the_submission_is_marked_failed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, answer: RecordedResponse,
        said: str) -> None:
    monkeypatch.setenv("TUNEPROXY_CASSETTE", str(scripted_until_create(tmp_path, answer)))
    monkeypatch.setenv("REPLICATE_API_TOKEN", "test-key")
    code, out, err = run_cli(capsys, *FIT_ARGS)
    assert code == 3 and said in err and "Traceback" not in err
    ((state, error),) = submissions()
    assert state == "failed" and said in (error or "")
    assert Ledger().jobs() == []


def test_without_a_destination_fit_says_how_to_name_one_before_anything_is_sent(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REPLICATE_DESTINATION")
    monkeypatch.setenv("TUNEPROXY_CASSETTE", str(cassette_path("replicate", "fit_happy_path")))
    monkeypatch.setenv("REPLICATE_API_TOKEN", "test-key")
    code, _, err = run_cli(capsys, *FIT_ARGS)
    assert code == 2 and "REPLICATE_DESTINATION=owner/name" in err and "Traceback" not in err
    assert submissions() == []


def test_an_estimate_needs_no_destination(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REPLICATE_DESTINATION")
    code, out, err = run_cli(capsys, "estimate", str(SAMPLE), "-p", "replicate", "-m", MODELS["replicate"], "--epochs",
                         "3", "--json")
    assert code == 0, err
    estimate: dict[str, Any] = json.loads(out)
    assert estimate["usd"] > 0 and estimate["quantities"][0]["kind"] == "hardware_seconds"


def test_the_case_and_the_fit_cassettes_train_the_same_trainer() -> None:
    assert MODELS["replicate"] == REPLICATE.model
