"""Every provider cassette has the shape the real service sends.

Each response is served, alone, to the very SDK method that calls its route, on a client built with
``_strict_response_validation=True``: the SDK's own types validate the body (required fields, enums,
types). Error responses must make the SDK raise its error class for that status.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import httpx2
import pytest

from tuneproxy.recording import CASSETTE_ROOT, Cassette, Interaction, build_response

CASSETTES = sorted(CASSETTE_ROOT.glob("*/*.json"))
MESSAGES = [{"role": "user", "content": "hi"}]


def openai_routes() -> list[tuple[str, str, Callable[[Any], Any]]]:
    return [
        ("POST", r"/v1/files", lambda c: c.files.create(file=("t.jsonl", b"{}\n"), purpose="fine-tune")),
        ("POST", r"/v1/fine_tuning/jobs", lambda c: c.fine_tuning.jobs.create(model="m", training_file="f")),
        ("GET", r"/v1/fine_tuning/jobs", lambda c: c.fine_tuning.jobs.list()),
        ("GET", r"/v1/fine_tuning/jobs/[^/]+", lambda c: c.fine_tuning.jobs.retrieve("j")),
        ("GET", r"/v1/fine_tuning/jobs/[^/]+/events", lambda c: c.fine_tuning.jobs.list_events("j")),
        ("POST", r"/v1/fine_tuning/jobs/[^/]+/cancel", lambda c: c.fine_tuning.jobs.cancel("j")),
        ("POST", r"/v1/chat/completions", lambda c: c.chat.completions.create(model="m", messages=MESSAGES)),
    ]


def together_routes() -> list[tuple[str, str, Callable[[Any], Any]]]:
    from together.lib.resources.files import UploadManager
    from together.lib.types.fine_tuning import FinetuneResponse as CreateResponse

    return [
        # The 302 has no body: the SDK must accept its Location and X-Together-File-Id headers.
        (
            "POST",
            r"/v1/files",
            lambda c: UploadManager(c).get_upload_url(
                "/v1/files", Path("train.jsonl"), "0" * 64, "fine-tune", "jsonl"
            ),
        ),
        (
            "POST",
            r"/v1/files/[^/]+/preprocess",
            lambda c: UploadManager(c).callback("/v1/files/f/preprocess"),
        ),
        ("GET", r"/v1/fine-tunes/models/limits", lambda c: c.fine_tuning.model_limits(model_name="m")),
        ("POST", r"/v1/fine-tunes/estimate-price", lambda c: c.fine_tuning.estimate_price(training_file="f")),
        # fine_tuning.create() ends in exactly this call (after limits and estimate).
        ("POST", r"/v1/fine-tunes", lambda c: c.post("/v1/fine-tunes", body={}, cast_to=CreateResponse)),
        ("GET", r"/v1/fine-tunes", lambda c: c.fine_tuning.list()),
        ("GET", r"/v1/fine-tunes/[^/]+", lambda c: c.fine_tuning.retrieve("j")),
        ("GET", r"/v1/fine-tunes/[^/]+/events", lambda c: c.fine_tuning.list_events("j")),
        ("GET", r"/v1/fine-tunes/[^/]+/metrics", lambda c: c.fine_tuning.list_metrics("j")),
        ("POST", r"/v1/fine-tunes/[^/]+/cancel", lambda c: c.fine_tuning.cancel("j")),
        ("POST", r"/v1/chat/completions", lambda c: c.chat.completions.create(model="m", messages=MESSAGES)),
    ]


def strict_client(provider: str, interaction: Interaction) -> Any:
    """An SDK client, strict, whose every request gets this interaction's recorded response."""

    def answer(request: Any) -> Any:
        return build_response(request, interaction.response)

    if provider == "openai":
        import openai

        http = httpx2.Client(transport=httpx2.MockTransport(answer))
        return openai.OpenAI(
            api_key="sk-test",
            base_url="https://api.openai.com/v1",
            max_retries=0,
            http_client=http,
            _strict_response_validation=True,
        )
    import together

    http = httpx.Client(transport=httpx.MockTransport(answer))
    return together.Together(
        api_key="tgp-test",
        base_url="https://api.together.ai",
        max_retries=0,
        http_client=http,
        _strict_response_validation=True,
    )


def sdk_call(provider: str, interaction: Interaction) -> Callable[[Any], Any] | None:
    """The SDK method for this interaction's route, or None for the presigned-URL PUT (no body)."""
    request = interaction.request
    host = urlsplit(request.url).netloc
    if provider == "together" and request.method == "PUT" and host != "api.together.ai":
        return None
    routes = openai_routes() if provider == "openai" else together_routes()
    for method, pattern, call in routes:
        if request.method == method and re.fullmatch(pattern, urlsplit(request.url).path):
            return call
    raise AssertionError(f"No SDK route known for {request.method} {request.url}: add it to test_cassettes")


def interactions() -> list[Any]:
    cases = []
    for path in CASSETTES:
        cassette = Cassette.load(path)
        for index, interaction in enumerate(cassette.interactions):
            cases.append(
                pytest.param(
                    cassette.provider, interaction, id=f"{cassette.provider}/{path.stem}#{index + 1}"
                )
            )
    return cases


def test_every_scenario_exists_for_both_providers() -> None:
    scenarios = {
        "happy_path",
        "failed_validation",
        "cancelled",
        "rate_limited",
        "lost_create",
        "unauthorized",
    }
    # Tuner-level scenarios: a whole Tuner.fit run (uploads, create, the wait loop, a completion).
    fit_scenarios = {
        "openai": {"fit_happy_path", "fit_failed", "fit_lost_create"},
        "together": {"fit_happy_path", "fit_failed", "fit_lost_create", "fit_cancelled"},
    }
    for provider in ("openai", "together"):
        found = {p.stem for p in (CASSETTE_ROOT / provider).glob("*.json")}
        assert found == scenarios | fit_scenarios[provider]


@pytest.mark.parametrize("path", CASSETTES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_cassette_file_follows_the_schema_and_names_its_source(path: Path) -> None:
    cassette = Cassette.load(path)
    assert (cassette.provider, cassette.scenario) == (path.parent.name, path.stem)
    assert cassette.source in ("recorded", "authored from API reference") and cassette.description
    assert cassette.interactions


@pytest.mark.parametrize("path", CASSETTES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_cassette_carries_no_credential(path: Path) -> None:
    for interaction in Cassette.load(path).interactions:
        auth = interaction.request.headers.get("authorization")
        assert auth in (None, "Bearer REDACTED")
    assert not re.search(r"(sk-|tgp_)[A-Za-z0-9_\-]{8,}", path.read_text())


@pytest.mark.parametrize(("provider", "interaction"), interactions())
def test_response_parses_under_the_sdk_types_with_strict_validation(
    provider: str, interaction: Interaction
) -> None:
    call = sdk_call(provider, interaction)
    if call is None:
        assert interaction.response.status == 200  # the presigned PUT: S3 answers 200 with no body
        return
    client = strict_client(provider, interaction)
    status = interaction.response.status
    if status < 400:
        assert call(client) is not None
        return
    sdk = __import__(provider)
    with pytest.raises(sdk.APIStatusError) as caught:
        call(client)
    assert caught.value.status_code == status
    assert caught.value.body["message"] if provider == "openai" else caught.value.body["error"]["message"]
