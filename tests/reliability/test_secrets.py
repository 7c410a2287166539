"""A key the service echoes, or one given directly (not from the environment), never reaches the ledger,
and tuneproxy's errors keep no link to the SDK exception that carried the request and its key."""

from __future__ import annotations

import pytest

from tests.contract.cases import CASES, training_file
from tuneproxy.contract import JobRecord, JobStatus
from tuneproxy.errors import ProviderError
from tuneproxy.ledger import Ledger
from tuneproxy.providers.together import TogetherProvider

HEX_KEY = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"  # no recognisable prefix: only its value can be scrubbed


def test_a_key_given_directly_and_echoed_in_a_failure_is_not_stored(tmp_path):
    TogetherProvider(api_key=HEX_KEY)
    ledger = Ledger(tmp_path / "state.db")
    ledger.save_job(JobRecord(provider="together", job_id="ft-1", base_model="m", status=JobStatus.FAILED,
                              raw_status="error", error=f"invalid credentials {HEX_KEY} for project p"))
    ledger.mark_submission("nope", "failed", error=f"refused {HEX_KEY}")
    ledger.close()
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("state.db*"))
    assert HEX_KEY.encode() not in stored
    assert "REDACTED" in Ledger(tmp_path / "state.db").job("ft-1").error


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_a_refused_key_error_keeps_no_link_to_the_sdk_exception(case, tmp_path):
    provider = case.provider(case.replay("unauthorized"))
    with pytest.raises(ProviderError) as caught:
        provider.upload(training_file(tmp_path))
    assert caught.value.__cause__ is None and caught.value.__context__ is None
