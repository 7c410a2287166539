"""The result of a fine-tuning job: a tuned model, its base for comparison, its costs and metrics."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from tuneproxy.contract import Deployable, Deployment, Endpoint, GenerationParams, JobEvent, JobRecord, Provider
from tuneproxy.errors import ConfigError, ProviderError
from tuneproxy.ledger import CostRow, Ledger

if TYPE_CHECKING:
    from tuneproxy.evaluation.model import EvalReport
    from tuneproxy.evaluation.scorers import Scorer


class TunedModel:
    """A tuned model: its name, where it came from, what it cost, how it trained, and endpoints to ask it
    (and its base) questions. Nothing here spends money unasked: a backend that serves a tuned model only
    on a paid deployment needs :meth:`deploy` first."""

    def __init__(self, provider: Provider, record: JobRecord, ledger: Ledger) -> None:
        self._provider = provider
        self.record = record
        self._ledger = ledger

    def __repr__(self) -> str:
        return f"<TunedModel {self.provider}:{self.tuned_model}>"

    @property
    def provider(self) -> str:
        """The backend's name."""
        return self.record.provider

    @property
    def tuned_model(self) -> str:
        """The tuned model's name at the backend."""
        return self.record.tuned_model or ""

    @property
    def model(self) -> str:
        """The tuned model's name at the backend (same as :attr:`tuned_model`)."""
        return self.tuned_model

    @property
    def base_model(self) -> str:
        """The model the job fine-tuned."""
        return self.record.base_model

    @property
    def job_id(self) -> str:
        """The backend's job id."""
        return self.record.job_id

    @property
    def serving_note(self) -> str:
        """What serving this model costs beyond its requests, where the backend says (a paid deployment that
        bills while it is up, a private model's idle time); empty otherwise. ``tuneproxy fit`` shows it."""
        return self._provider.capabilities.serving_note

    @property
    def endpoint(self) -> Endpoint:
        """Generates with the tuned model (on a :class:`Deployable` backend, pass the deployment's
        serving name to the provider's ``endpoint`` instead)."""
        return self._provider.endpoint(self.tuned_model)

    @property
    def base_endpoint(self) -> Endpoint:
        """Generates with the model the job trained on, as the backend serves it, for comparison."""
        serving = self._provider.inference_model(self.base_model)
        if serving is None:
            raise ConfigError(
                f"{self._provider.capabilities.display_name} cannot serve the base model {self.base_model} "
                "for comparison. Deploy it on a dedicated endpoint and compare against that.")
        return self._provider.endpoint(serving)

    def deployed_endpoint(self, deployment: Deployment) -> Endpoint:
        """Generates with the tuned model on ``deployment``, a paid one started with :meth:`deploy`."""
        if deployment.state != "ready" or not deployment.serving_model:
            raise ConfigError(f"Deployment {deployment.deployment_id} is {deployment.state}, not ready to answer: "
                              f"`tuneproxy deployments show {deployment.deployment_id}` follows it.")
        return self._provider.endpoint(deployment.serving_model)

    def deploy(self, hardware: str | None = None) -> Deployment:
        """Start a paid dedicated deployment of the tuned model (billed by the hour until deleted with
        ``tuneproxy deployments delete``); recorded in the ledger. Only where the backend needs one."""
        if not isinstance(self._provider, Deployable):
            raise ConfigError(f"{self._provider.capabilities.display_name} serves tuned models without a "
                              "deployment: use `.endpoint`.")
        deployment = self._provider.deploy(self.tuned_model, hardware=hardware)
        self._ledger.save_deployment(deployment)
        return deployment

    def wait_until_ready(self, deployment: Deployment, *, poll_interval: float | None = None,
                         on_change: Callable[[Deployment], None] | None = None) -> Deployment:
        """Read ``deployment`` until it is ready, saving each state in the ledger and passing it to
        ``on_change``; every ``poll_interval`` seconds (default: the backend's own pace), through the provider's
        sleep. One that fails, or is deleted meanwhile, is a :class:`ProviderError` that says to delete it."""
        assert isinstance(self._provider, Deployable)
        interval = self._provider.capabilities.poll_seconds if poll_interval is None else poll_interval
        while True:
            if on_change is not None:
                on_change(deployment)
            if deployment.state in ("ready", "failed", "stopping", "stopped"):
                break
            if interval > 0:
                self._provider.sleep(interval)
            deployment = self._provider.deployment(deployment.deployment_id)
            self._ledger.save_deployment(deployment)
        if deployment.state != "ready":
            name = deployment.deployment_id
            raise ProviderError(
                f"Deployment {name} of {deployment.model} is {deployment.state} ({deployment.raw_state}) instead of "
                f"ready: it serves nothing. Delete it so that nothing is left to bill: `tuneproxy deployments delete "
                f"{name}`; then try `tuneproxy deployments create {self.job_id}` again later or on other --hardware.",
                provider=deployment.provider, raw=deployment.raw_state)
        return deployment

    @property
    def metrics(self) -> list[JobEvent]:
        """The job's events that carry training metrics (step, epoch, losses), oldest first."""
        return [e for e in self._ledger.events(self.provider, self.job_id)
                if e.train_loss is not None or e.valid_loss is not None]

    @property
    def costs(self) -> list[CostRow]:
        """Every cost row for this job: estimates before it, the bill after."""
        return self._ledger.job_costs(self.record)

    def evaluate(self, holdout: Any = None, *, baselines: Sequence[str | Endpoint] = ("base",),
                 scorers: Sequence[str | Scorer] | None = None, slice_by: str | None = None,
                 params: GenerationParams | None = None, concurrency: int = 8, show_progress: bool = True,
                 judge: Endpoint | None = None, deployment: Deployment | None = None, resamples: int = 10_000,
                 seed: int = 0, pairwise: str | None = None) -> EvalReport:
        """The tuned model against ``baselines`` on held-out data, per slice, with 95% intervals.

        ``holdout``: a path or records; by default exactly what this job's fit held out (examples the job
        trained on are refused). ``baselines``: ``base`` (the base model, the data's system prompt kept),
        ``few-shot:K`` (the base shown K training examples first), another job's id, ``URL#MODEL`` for an
        OpenAI-compatible server, or an :class:`Endpoint`. ``scorers``: names such as ``exact``,
        ``json_fields``, ``label:category`` (docs/scorers.md), or :class:`Scorer` objects; by default chosen
        from the references' shape. ``slice_by``: a metadata key to compare per value of. Answers are cached
        in the ledger: a rerun asks only what is missing. Generation is greedy (temperature 0) by default.
        ``deployment``: ask the tuned model on this paid deployment (where the backend serves a tuned model
        only on one; nothing is deployed here). ``judge``: the endpoint that grades ``judge:`` scorers.
        ``pairwise``: criteria for ``judge`` to pick the better of the tuned and each baseline's answer by
        (both orders asked); the report then counts wins, ties and losses per slice.
        """
        from tuneproxy.evaluation.evaluate import Evaluation
        from tuneproxy.evaluation.plan import baseline_systems, candidate_system, holdout_items
        from tuneproxy.evaluation.runner import Runner
        from tuneproxy.evaluation.scorers import PairwiseJudge, default_scorers, scorer_from_spec

        if pairwise is not None and judge is None:
            raise ConfigError("pairwise= needs a judge endpoint to ask: pass judge=endpoint too.")
        items = holdout_items(self, holdout, slice_by)
        chosen = (default_scorers(items) if scorers is None else
                  [s if not isinstance(s, str) else scorer_from_spec(s, judge=judge) for s in scorers])
        evaluation = Evaluation(
            candidate=candidate_system(self, deployment), baselines=baseline_systems(self, baselines, slice_by),
            items=items,
            scorers=chosen, runner=Runner(self._ledger, concurrency=concurrency, show_progress=show_progress),
            slice_by=slice_by, params=params or GenerationParams(), job_id=self.job_id,
            events=self._ledger.events(self.provider, self.job_id), resamples=resamples, seed=seed,
            pairwise=PairwiseJudge(judge, pairwise) if pairwise is not None and judge is not None else None)
        return evaluation.run()
