"""Every provider cassette has the shape the real service sends, and each provider has the cassettes its
case declares (tests/contract/cases.py).

Each response is served, alone, to the very SDK method that calls its route (the case's route table), on the
case's strict client (``_strict_response_validation=True``): the SDK's own types validate the body (required
fields, enums, types). Error responses must make the SDK raise its error class for that status.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.contract.cases import BY_NAME, CASES, AnswerTransport, ProviderCase
from tuneproxy import registry
from tuneproxy.recording import CASSETTE_ROOT, Cassette, Interaction, JsonBody

CASSETTES = sorted(CASSETTE_ROOT.glob("*/*.json"))


def interactions() -> list[Any]:
    cases = []
    for path in CASSETTES:
        cassette = Cassette.load(path)
        for index, interaction in enumerate(cassette.interactions):
            cases.append(pytest.param(cassette.provider, interaction,
                                      id=f"{cassette.provider}/{path.stem}#{index + 1}"))
    return cases


def test_every_cassette_directory_belongs_to_a_case() -> None:
    assert {p.name for p in CASSETTE_ROOT.iterdir() if p.is_dir()} == {case.name for case in CASES}


@pytest.mark.parametrize("case", CASES, ids=str)
def test_the_cassettes_are_exactly_the_scenarios_the_case_declares(case: ProviderCase) -> None:
    found = {p.stem for p in (CASSETTE_ROOT / case.name).glob("*.json")}
    assert found == case.scenarios | case.extra_scenarios


@pytest.mark.parametrize("path", CASSETTES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_cassette_file_follows_the_schema_and_names_its_source(path: Path) -> None:
    cassette = Cassette.load(path)
    assert (cassette.provider, cassette.scenario) == (path.parent.name, path.stem)
    assert cassette.source in ("recorded", "authored from API reference") and cassette.description
    assert cassette.interactions


def key_shapes() -> list[str]:
    shapes = []
    for name in registry.names():
        credentials = registry.provider_class(name).CAPABILITIES.credentials
        if credentials is not None and credentials.key_pattern:
            shapes.append(credentials.key_pattern)
    return shapes


def test_every_provider_with_a_case_declares_its_key_shape() -> None:
    assert all(case.cls.CAPABILITIES.credentials.key_pattern for case in CASES)  # type: ignore[union-attr]


@pytest.mark.parametrize("path", CASSETTES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_cassette_carries_no_credential(path: Path) -> None:
    for interaction in Cassette.load(path).interactions:
        auth = interaction.request.headers.get("authorization")
        assert auth in (None, "Bearer REDACTED")
    text = path.read_text()
    for shape in key_shapes():
        assert not re.search(shape, text), shape


def recorded_message(interaction: Interaction) -> str:
    body = interaction.response.body
    assert isinstance(body, JsonBody), "an error response must carry a JSON body"
    inner = body.json_.get("error", body.json_)
    if not isinstance(inner, dict):
        return inner
    return inner.get("message") or inner["detail"]  # RFC 7807 problem details (Replicate) carry "detail"


@pytest.mark.parametrize(("provider", "interaction"), interactions())
def test_response_parses_under_the_sdk_types_with_strict_validation(provider: str, interaction: Interaction) -> None:
    case = BY_NAME[provider]
    call = case.route(interaction).call
    if call is None:
        assert interaction.response.body is None and interaction.response.status == 200
        return
    client = case.strict_client(AnswerTransport(interaction))
    assert getattr(client, "_strict_response_validation", False) is case.strict_validation
    status = interaction.response.status
    if status < 400:
        assert call(client) is not None
        return
    sdk = __import__(client.__class__.__module__.partition(".")[0])
    error = getattr(sdk, "APIStatusError", None) or sdk.exceptions.ReplicateError
    with pytest.raises(error) as caught:
        call(client)
    assert getattr(caught.value, "status_code", None) or caught.value.status == status
    # the service's message reaches the SDK's error (its text, or its parsed body where the SDK words the
    # error itself: together's upload calls every 401 a trial-credit problem)
    message = recorded_message(interaction)
    assert message and (message in str(caught.value) or message in str(getattr(caught.value, "body", "")))
