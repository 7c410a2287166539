"""tuneproxy: one interface for LoRA fine-tuning — validate, estimate, submit, follow, record, evaluate.

    from tuneproxy import Tuner
    tuned = Tuner(provider="together", model="llama-3.1-8b-instruct", epochs=3).fit("train.jsonl")
"""

from tuneproxy.contract import Completion, CostEstimate, JobEvent, JobRecord, JobStatus
from tuneproxy.dataset import Report, validate
from tuneproxy.errors import (
    BudgetExceeded,
    ConfigError,
    DatasetError,
    JobFailed,
    ProviderError,
    ProviderSunset,
    TuneproxyError,
)
from tuneproxy.jobs import Job, TunedModel
from tuneproxy.ledger import Ledger
from tuneproxy.tuner import Tuner

__version__ = "0.1.0"

__all__ = [
    "BudgetExceeded", "Completion", "ConfigError", "CostEstimate", "DatasetError", "Job", "JobEvent",
    "JobFailed", "JobRecord", "JobStatus", "Ledger", "ProviderError", "ProviderSunset", "Report",
    "TunedModel", "Tuner", "TuneproxyError", "validate",
]
