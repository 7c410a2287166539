"""Tuner(provider="local") is the same fit() as for a service: ledger, events, billed cost, endpoints."""

from __future__ import annotations

import pytest

from tests.local_helpers import build_model_folder, ticket_records, ticket_words
from tuneproxy import Job, JobStatus, Ledger, TunedModel, Tuner

pytest.importorskip("torch")
pytest.importorskip("peft")


def test_local_fit_goes_through_the_same_path_as_a_managed_service(tmp_path):
    model_dir = build_model_folder(tmp_path / "model", ticket_words())
    records = ticket_records(40)
    home = tmp_path / "elsewhere"  # a non-default job area: reattaching must find it again
    tuner = Tuner("local", str(model_dir), epochs=2, batch_size=8, lora_rank=4, learning_rate=1e-2, seed=0,
                  poll_interval=0.05, show_progress=False, provider_options={"home": str(home)})
    with pytest.warns(UserWarning, match="TP501"):  # 36 examples: the few-examples warning, not an error
        tuned = tuner.fit(records[4:], holdout=records[:4])
    assert isinstance(tuned, TunedModel) and tuned.model.startswith("local:")
    ledger = Ledger()
    assert ledger.job(tuned.job_id).status is JobStatus.SUCCEEDED
    assert ledger.submission(tuned.record.intent_id).state == "submitted"
    losses = [m.train_loss for m in tuned.metrics if m.train_loss is not None]
    assert len(losses) >= 2 and losses[-1] < losses[0]
    assert any(m.valid_loss is not None for m in tuned.metrics)
    assert [c.kind for c in tuned.costs][-1] == "billed" and tuned.costs[-1].usd == 0.0
    assert (home / "jobs" / tuned.job_id).is_dir()
    again = Job.attach(tuned.job_id)  # a new process: the ledger knows the options the job was submitted with
    assert again.provider.home == home and again.refresh().status is JobStatus.SUCCEEDED
    prompt = records[0]["messages"][:-1]
    assert isinstance(tuned.endpoint.complete(prompt, max_tokens=5).text, str)
    assert isinstance(tuned.base_endpoint.complete(prompt, max_tokens=5).text, str)
