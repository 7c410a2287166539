"""tuneproxy: one interface for LoRA fine-tuning — validate, estimate, submit, follow and record.

    from tuneproxy import Tuner
    tuned = Tuner(provider="together", model="meta-llama/Meta-Llama-3.1-8B-Instruct-Reference",
                  epochs=3).fit("train.jsonl")

Evaluation of a tuned model against its base is not built yet: ``TunedModel.endpoint`` and
``TunedModel.base_endpoint`` are what it will compare.
"""

from importlib.metadata import PackageNotFoundError, version

from tuneproxy.contract import (
    Completion,
    CostEstimate,
    Deployable,
    Deployment,
    GenerationParams,
    JobEvent,
    JobRecord,
    JobStatus,
    ProviderOptions,
    Quantity,
)
from tuneproxy.dataset import Report, validate
from tuneproxy.errors import (
    BudgetExceeded,
    ConfigError,
    DatasetError,
    JobFailed,
    NotFound,
    ProviderError,
    ProviderSunset,
    RateLimited,
    TuneproxyError,
)
from tuneproxy.jobs import Job
from tuneproxy.ledger import Ledger
from tuneproxy.tuned import TunedModel
from tuneproxy.tuner import Tuner

try:
    __version__ = version("tuneproxy")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "BudgetExceeded", "Completion", "ConfigError", "CostEstimate", "DatasetError", "Deployable", "Deployment",
    "GenerationParams", "Job", "JobEvent", "JobFailed", "JobRecord", "JobStatus", "Ledger", "NotFound",
    "ProviderError", "ProviderOptions", "ProviderSunset", "Quantity", "RateLimited", "Report", "TunedModel",
    "Tuner", "TuneproxyError", "validate",
]
