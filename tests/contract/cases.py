"""The backends the contract suite runs over: one :class:`ProviderCase` per backend that speaks HTTP to a
service, and :data:`LOCAL` for the backend that trains on this machine. What the contract suite, the cassette
checks (tests/test_cassettes.py) and the HTTP tests (tests/test_http.py) need to know about each, and nothing
else.

Adding a provider with a lifecycle = adding its cassettes under ``fixtures/cassettes/<name>/`` and one
case to :data:`CASES`. ``test_every_provider_with_a_lifecycle_has_a_case`` fails until the case is there.

:data:`CASES` holds the HTTP backends only (the cassette checks and the HTTP tests run over them).
:data:`EVERY_CASE` adds the local backend, which has no cassettes, SDK, key or transport: its behaviours run
against a real worker process training a tiny model built in the test (tests/local_helpers.py) for two steps.
The behaviours that cannot apply to it are listed, with the reason, in tests/contract/test_provider_contract.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import httpx2

from tests.local_helpers import follow, ticket_records, write_jsonl
from tuneproxy import registry
from tuneproxy.contract import (
    Completion,
    CostEstimate,
    Hyperparameters,
    JobEvent,
    JobRecord,
    JobSpec,
    Provider,
    Stats,
    UploadedFile,
)
from tuneproxy.recording import Cassette, Interaction, JsonBody, ReplayTransport, build_response, cassette_path

CONTRACT_SCENARIOS: frozenset[str] = frozenset(
    {"happy_path", "failed_validation", "cancelled", "rate_limited", "lost_create", "unauthorized"}
)
"""The cassettes every backend with a lifecycle records: the contract suite replays each of them.

- happy_path: upload; the estimate (if the service is asked); the create; the job read while it runs, its
  events, the job read once it has succeeded; one chat completion with the tuned model.
- failed_validation: the create, then a read of the job failed by the service's own file validation.
- cancelled: the create, the cancel, a read of the job cancelled.
- rate_limited: a read of ``job_id`` answered 429 with Retry-After, then the same read answered.
- lost_create: the create (its answer is lost in the tests), then the lookup ``find_job`` makes.
- unauthorized: an upload answered 401.
"""

INTENT = "8f14e45f-ceea-467f-a0e6-7ef1c2a9b001"
PROMPT = [{"role": "user", "content": "What is 2 plus 2?"}]
MESSAGES = [{"role": "user", "content": "hi"}]

@dataclass(frozen=True)
class Route:
    """One HTTP route a backend's cassettes use, and the SDK call that parses its response.

    ``path`` and ``host`` are regular expressions matched in full against the request URL's path and
    host (no ``host``: any). ``call`` is None for a response with no body to parse (a presigned-URL PUT).
    """

    method: str
    path: str
    call: Callable[[Any], Any] | None
    host: str | None = None

    def matches(self, method: str, url: str) -> bool:
        parts = urlsplit(url)
        return (method == self.method and re.fullmatch(self.path, parts.path) is not None
                and (self.host is None or re.fullmatch(self.host, parts.netloc) is not None))


@dataclass(frozen=True)
class ProviderCase:
    """What the shared suites need to know about one backend (see each field)."""

    name: str
    """The registry name, which is also the cassette directory."""
    model: str
    """The base model the cassettes train."""
    spec: Callable[[], JobSpec]
    """The JobSpec the cassettes were recorded with (their create request bodies follow from it)."""
    job_id: str
    """The job the scenarios create and read."""
    key: str
    """A fake API key. It matches no registered key shape, so a leak cannot hide behind redaction by shape."""
    create: tuple[str, str]
    """Method and URL path of the paid create request: where a lost answer is injected."""
    failure_message: str
    """The service's own words in ``failed_validation``, verbatim."""
    strict_client: Callable[[Any], Any]
    """The SDK's sync client, strict response validation on and retries off, on the given transport."""
    routes: Callable[[], Sequence[Route]]
    """Every route the cassettes use, with the SDK call that parses its response (tests/test_cassettes.py)."""
    scenarios: frozenset[str] = CONTRACT_SCENARIOS
    """The contract cassettes it declares (all of them, for a backend with a lifecycle)."""
    extra_scenarios: frozenset[str] = frozenset()
    """Other cassettes its directory holds, replayed by other tests (Tuner-level ``fit_*`` runs)."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """Non-default options every provider in the suite is built with; none of them changes a request."""
    answer: Callable[[Mapping[str, Any]], tuple[str, str | None, int]] = field(default=lambda body: chat_answer(body))
    """(text, finish reason or None where the service states none, completion tokens) of a recorded answer to
    a generation request: how the tuned model's reply is checked against what the service sent."""
    serving: Callable[[str], str] = field(default=lambda tuned: tuned)
    """The name a tuned model is asked by (where the service serves it only on a deployment: ``model#deployment``,
    the deployment its deploy cassette starts)."""
    error_body: Callable[[str, int], dict[str, Any]] = field(default=lambda message, status: {
        "error": {"message": message, "type": "invalid_request_error" if status < 500 else "server_error"}})
    """The body the service sends with an error status, carrying ``message`` (for scripted refusals)."""
    strict_validation: bool = True
    """The strict client validates every response (Stainless SDKs); False where the SDK has no strict mode."""

    def __str__(self) -> str:
        return self.name

    @property
    def cls(self) -> type[Provider]:
        return registry.provider_class(self.name)

    @property
    def env_var(self) -> str:
        credentials = self.cls.CAPABILITIES.credentials
        assert credentials is not None, f"{self.name} needs a key: its Capabilities must name the variable"
        return credentials.env_var

    def provider(self, transport: Any, *, waits: list[float] | None = None, key: str | None = None,
                 **options: Any) -> Provider:
        """The provider on ``transport`` with the case's options (and ``options``); every sleep it asks
        for is appended to ``waits`` — or, without ``waits``, fails the test."""
        return self.cls({**self.options, **options}, api_key=key or self.key, transport=transport,
                        sleep=waits.append if waits is not None else never_sleep)

    def cassette(self, scenario: str) -> Cassette:
        assert scenario in self.scenarios | self.extra_scenarios, f"{self.name} declares no {scenario} cassette"
        return Cassette.load(cassette_path(self.name, scenario))

    def replay(self, scenario: str) -> ReplayTransport:
        return ReplayTransport(self.cassette(scenario), name=f"{self.name}/{scenario}")

    def scripted(self, interactions: Sequence[Interaction]) -> ReplayTransport:
        """A replay of these interactions, in this order."""
        return ReplayTransport(Cassette(provider=self.name, scenario="scripted", description="built by a test",
                                        source="authored from API reference", interactions=list(interactions)))

    def route(self, interaction: Interaction) -> Route:
        request = interaction.request
        for route in self.routes():
            if route.matches(request.method, request.url):
                return route
        raise AssertionError(f"No route of the {self.name} case for {request.method} {request.url}: add it "
                             "to its routes in tests/contract/cases.py")


def chat_answer(body: Mapping[str, Any]) -> tuple[str, str | None, int]:
    """A chat completion's reply, finish reason and completion tokens."""
    choice = body["choices"][0]
    return choice["message"]["content"], choice["finish_reason"], body["usage"]["completion_tokens"]


def paths(transport: ReplayTransport) -> list[tuple[str, str]]:
    """The method and path of every request a replay served, in order."""
    return [(r.method, urlsplit(r.url).path) for r in transport.log]


def sent(transport: ReplayTransport, method: str, path: str) -> dict[str, Any]:
    """The JSON body of the one request sent to ``method path``."""
    (request,) = transport.requests(method, path)
    assert isinstance(request.body, JsonBody)
    return request.body.json_


def never_sleep(seconds: float) -> None:
    raise AssertionError(f"a test tried to sleep {seconds}s")


class AnswerTransport(httpx.BaseTransport, httpx2.BaseTransport):
    """Answers every request, of either HTTP library, with one recorded response."""

    def __init__(self, interaction: Interaction) -> None:
        self.interaction = interaction

    def handle_request(self, request: Any) -> Any:
        request.read()
        return build_response(request, self.interaction.response)


def training_file(tmp_path: Path, examples: int = 10) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(
        json.dumps({"messages": [{"role": "user", "content": f"{i}+{i}?"},
                                 {"role": "assistant", "content": str(2 * i)}]}) + "\n"
        for i in range(examples)))
    return path


# --------------------------------------------------------------------------- the happy path


@dataclass
class HappyRun:
    """One happy path, as far as the contract goes: upload, estimate, submit, refresh until terminal (reading
    the events in between), one chat completion with the tuned model. ``spec``: the JobSpec submitted.
    ``slices``: the interactions each call used, by call (``transport`` None and no slices: a local run)."""

    provider: Provider
    transport: ReplayTransport | None
    upload: UploadedFile
    spec: JobSpec
    estimate: CostEstimate
    submitted: JobRecord
    records: list[JobRecord] = field(default_factory=list)
    events: list[JobEvent] = field(default_factory=list)
    completion: Completion | None = None
    slices: dict[str, list[list[Interaction]]] = field(default_factory=dict)


def run_happy_path(case: ProviderCase, tmp_path: Path) -> HappyRun:
    """Replay the case's happy_path through the strict SDK, every request checked and every one used."""
    transport = case.replay("happy_path")
    p = case.provider(transport, strict_responses=True)
    slices: dict[str, list[list[Interaction]]] = {}

    def call(label: str, fn: Any) -> Any:
        start = transport.position
        result = fn()
        slices.setdefault(label, []).append(transport.cassette.interactions[start:transport.position])
        return result

    upload = call("upload", lambda: p.upload(training_file(tmp_path)))
    spec = case.spec().model_copy(update={"training_file": upload.id})
    estimate = call("estimate", lambda: p.estimate(Stats(examples=10, total_tokens=1000), spec))
    run = HappyRun(p, transport, upload, spec, estimate, call("submit", lambda: p.submit(spec)), slices=slices)
    after = None
    for _ in range(20):
        record = call("refresh", lambda: p.refresh(run.submitted.job_id))
        run.records.append(record)
        if record.status.terminal:
            break
        new = call("events", lambda after=after: p.events(run.submitted.job_id, after))
        run.events += new
        after = new[-1].id if new else after
    else:
        raise AssertionError(f"{case.name}/happy_path never reaches a terminal state")
    done = run.records[-1]
    run.completion = call("complete", lambda: p.endpoint(case.serving(done.tuned_model or "")).complete(PROMPT))
    transport.assert_all_played()
    return run


# --------------------------------------------------------------------------- OpenAI


def _openai_client(transport: Any) -> Any:
    import openai

    return openai.OpenAI(api_key="sk-test", base_url="https://api.openai.com/v1", max_retries=0,
                         http_client=httpx2.Client(transport=transport), _strict_response_validation=True)


def _openai_routes() -> list[Route]:
    return [
        Route("POST", r"/v1/files", lambda c: c.files.create(file=("t.jsonl", b"{}\n"), purpose="fine-tune")),
        Route("POST", r"/v1/fine_tuning/jobs", lambda c: c.fine_tuning.jobs.create(model="m", training_file="f")),
        Route("GET", r"/v1/fine_tuning/jobs", lambda c: c.fine_tuning.jobs.list()),
        Route("GET", r"/v1/fine_tuning/jobs/[^/]+", lambda c: c.fine_tuning.jobs.retrieve("j")),
        Route("GET", r"/v1/fine_tuning/jobs/[^/]+/events", lambda c: c.fine_tuning.jobs.list_events("j")),
        Route("POST", r"/v1/fine_tuning/jobs/[^/]+/cancel", lambda c: c.fine_tuning.jobs.cancel("j")),
        Route("POST", r"/v1/chat/completions", lambda c: c.chat.completions.create(model="m", messages=MESSAGES)),
    ]


OPENAI = ProviderCase(
    name="openai",
    model="gpt-4o-mini-2024-07-18",
    spec=lambda: JobSpec(
        model="gpt-4o-mini-2024-07-18", training_file="file-3Kx9TmQvR2wLpZ8nB6yHdE", intent_id=INTENT,
        hyperparameters=Hyperparameters(epochs=3, batch_size=4, learning_rate_multiplier=1.8,
                                        suffix="support-bot", seed=42),
    ),
    job_id="ftjob-7WjkL3bq2eXc9RzYt0pNa4Us",
    key="fake-openai-key-0123456789",
    create=("POST", "/v1/fine_tuning/jobs"),
    failure_message=("The job failed due to an invalid training file. Invalid file format. Line 3, key "
                     "\"messages\": Assistant message at index 2 has an unrecognized key 'speaker'."),
    strict_client=_openai_client,
    routes=_openai_routes,
    extra_scenarios=frozenset({"fit_happy_path", "fit_failed", "fit_lost_create"}),
    options={"timeout": 30.0, "project": "proj_contract"},
)


# --------------------------------------------------------------------------- Together AI


def _together_client(transport: Any) -> Any:
    import together

    return together.Together(api_key="tgp-test", base_url="https://api.together.ai", max_retries=0,
                             http_client=httpx.Client(transport=transport), _strict_response_validation=True)


def _together_routes() -> list[Route]:
    from together.lib.resources.files import UploadManager
    from together.lib.types.fine_tuning import FinetuneResponse as CreateResponse

    return [
        # The 302 has no body: the SDK must accept its Location and X-Together-File-Id headers.
        Route("POST", r"/v1/files", lambda c: UploadManager(c).get_upload_url(
            "/v1/files", Path("train.jsonl"), "0" * 64, "fine-tune", "jsonl")),
        # The presigned-URL PUT: the storage host answers 200 with no body.
        Route("PUT", r"/[^/]+", None, host=r"together-fine-tuning-uploads\.s3\.[a-z0-9-]+\.amazonaws\.com"),
        Route("POST", r"/v1/files/[^/]+/preprocess", lambda c: UploadManager(c).callback("/v1/files/f/preprocess")),
        Route("GET", r"/v1/fine-tunes/models/limits", lambda c: c.fine_tuning.model_limits(model_name="m")),
        Route("POST", r"/v1/fine-tunes/estimate-price", lambda c: c.fine_tuning.estimate_price(training_file="f")),
        # fine_tuning.create() ends in exactly this call (after limits and estimate).
        Route("POST", r"/v1/fine-tunes", lambda c: c.post("/v1/fine-tunes", body={}, cast_to=CreateResponse)),
        Route("GET", r"/v1/fine-tunes", lambda c: c.fine_tuning.list()),
        Route("GET", r"/v1/fine-tunes/[^/]+", lambda c: c.fine_tuning.retrieve("j")),
        Route("GET", r"/v1/fine-tunes/[^/]+/events", lambda c: c.fine_tuning.list_events("j")),
        Route("GET", r"/v1/fine-tunes/[^/]+/metrics", lambda c: c.fine_tuning.list_metrics("j")),
        Route("POST", r"/v1/fine-tunes/[^/]+/cancel", lambda c: c.fine_tuning.cancel("j")),
        Route("POST", r"/v1/chat/completions", lambda c: c.chat.completions.create(model="m", messages=MESSAGES)),
        # dedicated deployments (the v2 API): registry model, configs, hardware, endpoint and deployment
        Route("GET", r"/v2/projects/[^/]+/models/[^/]+", lambda c: c.models.retrieve("m", project_id="p")),
        Route("GET", r"/v2/projects/[^/]+/configs", lambda c: c.models.configs.list(project_id="p")),
        Route("GET", r"/v2/public/inference-instance-types", lambda c: c.endpoints.hardware.list()),
        Route("POST", r"/v2/projects/[^/]+/endpoints", lambda c: c.endpoints.create(name="n", project_id="p")),
        Route("DELETE", r"/v2/projects/[^/]+/endpoints/[^/]+",
              lambda c: c.endpoints.delete("e", project_id="p")),
        Route("POST", r"/v2/projects/[^/]+/endpoints/[^/]+/deployments", lambda c: c.endpoints.deployments.create(
            "e", project_id="p", name="n", autoscaling={"min_replicas": 1, "max_replicas": 1})),
        Route("GET", r"/v2/projects/[^/]+/endpoints/[^/]+/deployments",
              lambda c: c.endpoints.deployments.list("e", project_id="p")),
        Route("GET", r"/v2/projects/[^/]+/endpoints/[^/]+/deployments/[^/]+",
              lambda c: c.endpoints.deployments.retrieve("d", endpoint_id="e", project_id="p")),
        Route("PATCH", r"/v2/projects/[^/]+/endpoints/[^/]+/deployments/[^/]+",
              lambda c: c.endpoints.deployments.update("d", endpoint_id="e", project_id="p",
                                                        update_mask="autoscaling")),
        Route("DELETE", r"/v2/projects/[^/]+/endpoints/[^/]+/deployments/[^/]+",
              lambda c: c.endpoints.deployments.delete("d", endpoint_id="e", project_id="p")),
    ]


TOGETHER = ProviderCase(
    name="together",
    model="meta-llama/Meta-Llama-3.1-8B-Instruct-Reference",
    spec=lambda: JobSpec(
        model="meta-llama/Meta-Llama-3.1-8B-Instruct-Reference",
        training_file="file-6f0b7c2d-1e3a-4b5c-8d9e-0a1b2c3d4e5f", intent_id=INTENT,
        hyperparameters=Hyperparameters(epochs=3, learning_rate=0.0002, batch_size=16, lora_rank=16,
                                        lora_alpha=32, lora_dropout=0.05, seed=42, suffix="support-bot"),
    ),
    job_id="ft-3c1f9a2e-7b4d-4e8a-9f01-5d6c7b8a9e0f",
    key="fake-together-key-0123456789",
    create=("POST", "/v1/fine-tunes"),
    failure_message=(
        "Error while validating the training file: line 4 has an invalid format: After the optional system "
        "message, conversation roles must alternate between user/assistant/user/assistant/user... Found two "
        "consecutive 'user' messages."),
    strict_client=_together_client,
    routes=_together_routes,
    extra_scenarios=frozenset({"fit_happy_path", "fit_failed", "fit_lost_create", "fit_cancelled",
                               "deploy_happy_path", "deploy_cli"}),
    # n_evals only reaches the wire with a validation file, which the contract scenarios do not send
    options={"timeout": 30.0, "n_evals": 2},
)


# --------------------------------------------------------------------------- Fireworks AI


def _fireworks_client(transport: Any) -> Any:
    import fireworks

    # no base_url: with one the SDK drops /inference from the chat URL (the cassettes hold the real URLs)
    return fireworks.Fireworks(api_key="fw-test", account_id="acme", max_retries=0,
                               http_client=httpx.Client(transport=transport), _strict_response_validation=True)


def _fireworks_routes() -> list[Route]:
    host = r"api\.fireworks\.ai"
    jobs = r"/v1/accounts/[^/]+/supervisedFineTuningJobs"
    return [
        Route("POST", r"/v1/accounts/[^/]+/datasets", lambda c: c.datasets.create(dataset={}, dataset_id="d"), host),
        Route("POST", r"/v1/accounts/[^/]+/datasets/[^/:]+:upload",
              lambda c: c.datasets.upload("d", file=("t.jsonl", b"{}\n")), host),
        Route("GET", r"/v1/accounts/[^/]+/datasets/[^/:]+", lambda c: c.datasets.get("d"), host),
        Route("POST", jobs, lambda c: c.supervised_fine_tuning_jobs.create(dataset="d"), host),
        Route("GET", jobs, lambda c: c.supervised_fine_tuning_jobs.list(), host),
        Route("GET", jobs + r"/[^/:]+", lambda c: c.supervised_fine_tuning_jobs.get("j"), host),
        Route("POST", jobs + r"/[^/:]+:cancel", lambda c: c.supervised_fine_tuning_jobs.cancel("j", body={}), host),
        Route("POST", r"/inference/v1/chat/completions",
              lambda c: c.chat.completions.create(model="m", messages=MESSAGES), host),
        Route("POST", r"/v1/accounts/[^/]+/deployments", lambda c: c.deployments.create(base_model="m"), host),
        Route("GET", r"/v1/accounts/[^/]+/deployments/[^/]+", lambda c: c.deployments.get("d"), host),
        Route("DELETE", r"/v1/accounts/[^/]+/deployments/[^/]+", lambda c: c.deployments.delete("d"), host),
        # A job's metricsFileSignedUrl: no SDK method reads it. The provider fetches it with a plain client on
        # the same transport; its parser must find at least one loss point in the recorded file.
        Route("GET", r"/[^/]+/.+/metrics\.jsonl", _fireworks_metrics_file, r"storage\.googleapis\.com"),
    ]


def _fireworks_metrics_file(client: Any) -> Any:
    from tuneproxy.providers.fireworks import metric_points

    response = client._client.get("https://storage.googleapis.com/bucket/acme/sftj/j/metrics.jsonl")
    assert response.status_code == 200
    return metric_points(response.text) or None


FIREWORKS = ProviderCase(
    name="fireworks",
    model="accounts/fireworks/models/qwen3-8b",
    spec=lambda: JobSpec(
        model="accounts/fireworks/models/qwen3-8b", training_file="accounts/acme/datasets/tp-train-cf7bf2d5415e",
        intent_id=INTENT,
        hyperparameters=Hyperparameters(epochs=2, learning_rate=0.0001, lora_rank=16, max_seq_length=8192,
                                        batch_size=32, suffix="support-bot"),
    ),
    job_id="k3v9q2xz7m1p",
    key="fake-fireworks-key-0123456789",
    create=("POST", "/v1/accounts/acme/supervisedFineTuningJobs"),
    failure_message=("Dataset validation failed: line 4: the 'assistant' message at index 2 has an unrecognized key "
                     "'speaker'. Each message may carry role, content, weight, tool_calls, tool_call_id, name and "
                     "reasoning_content."),
    serving=lambda tuned: f"{tuned}#accounts/acme/deployments/{tuned.rsplit('/', 1)[-1]}",
    strict_client=_fireworks_client,
    routes=_fireworks_routes,
    extra_scenarios=frozenset({"fit_happy_path", "fit_failed", "fit_lost_create", "deploy_happy_path",
                               "deploy_failed"}),
    options={"timeout": 30.0, "account_id": "acme"},
)


# --------------------------------------------------------------------------- Replicate


def _replicate_client(transport: Any) -> Any:
    import replicate

    # the SDK's own client (its RetryTransport only ever sees the one answer); it has no strict mode: its
    # pydantic models still require their fields and check the status values
    return replicate.Client(api_token="r8-test", transport=transport)


def _replicate_routes() -> list[Route]:
    import io

    host = r"api\.replicate\.com"
    return [
        Route("POST", r"/v1/files", lambda c: c.files.create(io.BytesIO(b"{}\n"), filename="t.jsonl"), host),
        Route("GET", r"/v1/models/[^/]+/[^/]+", lambda c: c.models.get("o/n"), host),
        Route("POST", r"/v1/models", lambda c: c.models.create("o", "n", visibility="private", hardware="cpu"), host),
        Route("POST", r"/v1/models/[^/]+/[^/]+/versions/[^/]+/trainings",
              lambda c: c.trainings.create(model="o/n", version="v", input={}, destination="o/d"), host),
        Route("GET", r"/v1/trainings", lambda c: c.trainings.list(), host),
        Route("GET", r"/v1/trainings/[^/]+", lambda c: c.trainings.get("t"), host),
        Route("POST", r"/v1/trainings/[^/]+/cancel", lambda c: c.trainings.cancel("t"), host),
        Route("POST", r"/v1/predictions", lambda c: c.predictions.create(version="v", input={}), host),
        Route("GET", r"/v1/predictions/[^/]+", lambda c: c.predictions.get("p"), host),
        Route("POST", r"/v1/models/[^/]+/[^/]+/predictions",
              lambda c: c.models.predictions.create(model="o/n", input={}), host),
    ]


def _replicate_answer(body: Mapping[str, Any]) -> tuple[str, str | None, int]:
    """A prediction's joined output chunks and its output token count; Replicate states no finish reason."""
    return "".join(body["output"]), None, body["metrics"]["output_token_count"]


REPLICATE_VERSION = "4b0970478e6123a0437561282904683f32a9ed0307205dc5db2b5609d6a2ceff"
REPLICATE = ProviderCase(
    name="replicate",
    model=f"meta/llama-2-7b:{REPLICATE_VERSION}",
    spec=lambda: JobSpec(
        model=f"meta/llama-2-7b:{REPLICATE_VERSION}",
        training_file="https://api.replicate.com/v1/files/ZjY2YTc5NDAtM2U3Zi00ZDE0LWI0YjUtNmQ2ODg2NzZkNGY0",
        intent_id=INTENT, format="chat",
        hyperparameters=Hyperparameters(epochs=3, learning_rate=0.0002, batch_size=4, lora_rank=16, lora_alpha=32,
                                        lora_dropout=0.05, seed=42),
    ),
    job_id="r7k2m4qzxhrm80ckv1tb3n9a5c",
    key="fake-replicate-key-0123456789",
    create=("POST", f"/v1/models/meta/llama-2-7b/versions/{REPLICATE_VERSION}/trainings"),
    failure_message=("Training failed: train_data line 4 is not valid: each line must be a JSON object with a "
                     "'text' field or 'prompt' and 'completion' fields."),
    strict_client=_replicate_client,
    routes=_replicate_routes,
    extra_scenarios=frozenset({"fit_happy_path", "fit_failed", "fit_lost_create"}),
    options={"timeout": 30.0, "destination": "acme/support-bot"},
    answer=_replicate_answer,
    error_body=lambda message, status: {"title": "Invalid input" if status < 500 else "Server error",
                                        "detail": message, "status": status},
    strict_validation=False,
)


CASES: tuple[ProviderCase, ...] = (OPENAI, TOGETHER, FIREWORKS, REPLICATE)
BY_NAME: dict[str, ProviderCase] = {case.name: case for case in CASES}


# --------------------------------------------------------------------------- the local backend


@dataclass(frozen=True)
class LocalCase:
    """What the contract suite needs to know about the local backend (see each field). It trains on this
    machine: no cassettes, SDK, key or transport, and its model is a tiny one the test builds."""

    name: str = "local"
    options: Mapping[str, Any] = field(default_factory=lambda: {
        "device": "cpu",  # the same small, fast run on any machine
        "price_per_gpu_hour": 2.0,  # so the hours a job reports come to a bill above zero
        "generation_batch_size": 1,  # each conversation generated alone: a batch answers as single calls do
        "cancel_timeout": 120.0,  # cancel waits for the real worker: generous, never reached when things work
    })
    """Non-default options every provider in the suite is built with, besides its ``home``."""
    max_tokens: int = 8
    """The most tokens a completion in the suite generates."""

    def __str__(self) -> str:
        return self.name

    @property
    def cls(self) -> type[Provider]:
        return registry.provider_class(self.name)

    def provider(self, home: Path | None = None, **options: Any) -> Provider:
        """The provider with its job area in ``home`` (None: the default, under TUNEPROXY_HOME) and the case's
        options (and ``options``). It sleeps for real: only ever to wait on a real worker process."""
        return self.cls({**({"home": str(home)} if home else {}), **self.options, **options})

    def spec(self, model: Path, training_file: str, **hyperparameters: Any) -> JobSpec:
        """A short run of the tiny ``model``: one epoch of batches of 4 (and ``hyperparameters``)."""
        return JobSpec(model=str(model), training_file=training_file, intent_id=INTENT, hyperparameters={
            "epochs": 1, "learning_rate": 1e-2, "batch_size": 4, "lora_rank": 4, **hyperparameters})


LOCAL = LocalCase()
EVERY_CASE: tuple[ProviderCase | LocalCase, ...] = (*CASES, LOCAL)
"""Every backend with a job lifecycle: what the contract suite runs over."""


def run_local_happy_path(case: LocalCase, model: Path, tmp_path: Path) -> HappyRun:
    """The happy path on the local backend: a real worker trains ``model`` (a tiny one) on 8 examples for two
    steps; the run follows it to the end, reading the events after every read of the job."""
    p = case.provider(tmp_path / "home")
    upload = p.upload(write_jsonl(tmp_path / "train.jsonl", ticket_records(8)))
    spec = case.spec(model, upload.id)
    estimate = p.estimate(Stats(examples=8, total_tokens=400), spec)
    run = HappyRun(p, None, upload, spec, estimate, p.submit(spec))

    def seen(record: JobRecord) -> bool:
        run.records.append(record)
        run.events += p.events(record.job_id, run.events[-1].id if run.events else None)
        return record.status.terminal

    follow(p, run.submitted.job_id, until=seen, timeout_s=240)
    done = run.records[-1]
    run.completion = p.endpoint(done.tuned_model or "").complete(PROMPT, max_tokens=case.max_tokens)
    return run
