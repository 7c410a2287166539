"""The main job, end to end on the bundled sample: what `make demo` runs.

1. Validate fixtures/datasets/sample.jsonl against every provider's rules, with exact token statistics.
2. The cost desk: what fine-tuning it would cost on every backend, side by side, before anything is paid.
3. Fine-tune SmolLM2-135M-Instruct locally, then evaluate it against its base and a few-shot base per
   category, into an HTML report (when the local backend is installed). Each stage prints its time.
Everything runs offline; state goes to ./.tuneproxy-demo.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TUNEPROXY_HOME", str(ROOT / ".tuneproxy-demo"))

from rich.console import Console  # noqa: E402

from tuneproxy import Tuner, registry, validate  # noqa: E402
from tuneproxy.render import show_report  # noqa: E402
from tuneproxy.tuner import SunsetWarning  # noqa: E402

SAMPLE = ROOT / "fixtures" / "datasets" / "sample.jsonl"
MODELS = {
    "openai": "gpt-4o-mini-2024-07-18",
    "together": "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference",
    "fireworks": "accounts/fireworks/models/llama-v3p1-8b-instruct",
    "replicate": "meta/llama-2-7b-chat",
}


def validate_everywhere(console: Console) -> None:
    for name, model in MODELS.items():
        caps = registry.create(name, require_key=False).capabilities
        console.rule(f"{caps.display_name}: {model}")
        report = validate(SAMPLE, rules=caps.rules, service=caps.display_name, model=model, tokenizer=caps.tokenizer)
        show_report(console, report, epochs=3)


def estimates(console: Console) -> None:
    """The cost desk: the sample read and counted once, then every backend's default model priced side by side
    (what `tuneproxy estimate fixtures/datasets/sample.jsonl --all` prints)."""
    from tuneproxy.render import desk_table

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SunsetWarning)  # the sunset is in OpenAI's row's basis
        desk = Tuner.estimate_all(SAMPLE, epochs=3)
    console.print(desk_table(desk))


def main() -> int:
    console = Console()
    started = time.perf_counter()
    validate_everywhere(console)
    validated = time.perf_counter()
    estimates(console)
    estimated = time.perf_counter()
    console.print(f"time: validation {validated - started:.0f}s, estimates {estimated - validated:.0f}s")
    local_demo = ROOT / "examples" / "local_demo.py"
    if local_demo.exists():
        console.rule("Fine-tuning SmolLM2-135M-Instruct locally, then evaluating it")
        import runpy

        try:
            runpy.run_path(str(local_demo), run_name="__main__")
        except SystemExit as finished:  # the local demo ends with its own exit status
            if finished.code:
                return int(finished.code)
    console.print(f"demo total: {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
