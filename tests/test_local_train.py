"""The training loop in-process on a tiny random Llama: learning, saving, resuming, 4-bit."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

import torch  # noqa: E402

from tests.local_helpers import build_model_folder, ticket_records, ticket_words, write_jsonl  # noqa: E402
from tuneproxy.local_backend.jobfiles import JobFiles  # noqa: E402
from tuneproxy.local_backend.settings import TrainSettings  # noqa: E402
from tuneproxy.local_backend.train import Trainer, checkpoint_dirs  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    model = build_model_folder(root / "model", ticket_words())
    train = write_jsonl(root / "train.jsonl", ticket_records(48))
    valid = write_jsonl(root / "valid.jsonl", ticket_records(8, seed=1))
    return {"model": str(model), "training_file": str(train), "validation_file": str(valid)}


def run(data, job_dir, on_step=None, **settings):
    job_dir.mkdir(exist_ok=True)
    values = {"epochs": 1, "learning_rate": 1e-2, "batch_size": 8, "lora_rank": 8, "seed": 3, **settings}
    trainer = Trainer(TrainSettings(**data, **values), JobFiles(job_dir), job_dir.parent / "home",
                      on_step=on_step)
    return trainer, trainer.run()


def step_losses(job_dir):
    """Train loss by step; a step logged twice (before a crash and after resuming) keeps the last."""
    return {e["step"]: e["train_loss"] for e in JobFiles(job_dir).events() if "train_loss" in e}


def test_loss_decreases_over_a_few_steps(data, tmp_path):
    _, summary = run(data, tmp_path / "job", epochs=2)
    losses = step_losses(tmp_path / "job")
    assert len(losses) == summary["steps"] == 12
    assert sum(list(losses.values())[-3:]) / 3 < sum(list(losses.values())[:3]) / 3 - 0.3
    assert summary["final_valid_loss"] is not None


def test_same_seed_gives_the_same_losses(data, tmp_path):
    run(data, tmp_path / "a", max_steps=3)
    run(data, tmp_path / "b", max_steps=3)
    assert step_losses(tmp_path / "a") == step_losses(tmp_path / "b")


# peft (as a user calls it here) reads transformers' deprecated alias; only that warning is expected
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_saved_adapter_reloads_with_the_same_logits(data, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    trainer, _ = run(data, tmp_path / "job", max_steps=4)
    ids = torch.tensor([[2, 5, 6, 7, 3, 2, 8, 9, 10]])
    trainer.model.eval()
    with torch.no_grad():
        trained = trainer.model(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(data["model"])
        plain = base(input_ids=ids).logits
        reloaded = PeftModel.from_pretrained(base, str(tmp_path / "job" / "adapter"))(input_ids=ids).logits
    torch.testing.assert_close(reloaded, trained)
    assert not torch.allclose(plain, trained, atol=1e-4)


class Crash(Exception):
    pass


def test_resume_after_a_crash_continues_at_the_right_step_with_the_same_data_order(data, tmp_path):
    settings = {"epochs": 2, "save_every": 4, "lora_dropout": 0.1}
    run(data, tmp_path / "straight", **settings)

    def crash_at_step_6(step):
        if step == 6:
            raise Crash

    with pytest.raises(Crash):
        run(data, tmp_path / "crashed", on_step=crash_at_step_6, **settings)
    assert [p.name for p in checkpoint_dirs(JobFiles(tmp_path / "crashed"))] == ["step-00000004"]

    run(data, tmp_path / "crashed", **settings)
    events = JobFiles(tmp_path / "crashed").events()
    resumed = next(i for i, e in enumerate(events) if e["message"].startswith("Resumed"))
    assert events[resumed]["step"] == 4
    assert events[resumed + 1]["step"] == 5
    straight, crashed = step_losses(tmp_path / "straight"), step_losses(tmp_path / "crashed")
    assert crashed == pytest.approx(straight, rel=1e-6)


def test_4bit_nf4_base_trains_on_cpu(data, tmp_path):
    import bitsandbytes as bnb

    trainer, summary = run(data, tmp_path / "job", quantization="nf4", epochs=2)
    assert summary["quantization"] == "nf4"
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in trainer.model.modules())
    losses = list(step_losses(tmp_path / "job").values())
    assert losses[-1] < losses[0]
    assert (tmp_path / "job" / "adapter" / "adapter_config.json").is_file()


def test_merge_exports_a_plain_model_that_matches_the_adapter(data, tmp_path):
    from transformers import AutoModelForCausalLM

    trainer, _ = run(data, tmp_path / "job", max_steps=2, merge=True)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "job" / "merged")
    ids = torch.tensor([[2, 5, 6, 7, 3]])
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, trainer.model(input_ids=ids).logits,
                                   rtol=1e-4, atol=1e-4)
