"""One ``fit`` in a process of its own, for tests that kill it or run two at once.

``python -m tests.reliability.fit_process PROVIDER BASE_URL [GO_FILE]``: the key comes from the provider's
environment variable and the ledger from ``$TUNEPROXY_HOME``, as for a user. With ``GO_FILE`` the process
waits for that file to appear before it starts, so that two processes start the same fit at the same moment.
Prints the job's record as JSON on success.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

from tests.fit_helpers import MODELS, SAMPLE, before_the_sunset
from tuneproxy import Tuner
from tuneproxy.errors import TuneproxyError


def main(provider: str, base_url: str, go_file: str | None = None) -> int:
    warnings.simplefilter("ignore")  # the warnings are not under test here; stdout must be the record alone
    if go_file:
        while not Path(go_file).exists():
            time.sleep(0.005)
    tuner = Tuner(provider, MODELS[provider], epochs=3, batch_size=8, seed=42, suffix="support-bot",
                  poll_interval=0.01, show_progress=False, clock=before_the_sunset,
                  provider_options={"base_url": base_url})
    try:
        tuned = tuner.fit(SAMPLE, holdout=0.1)
    except TuneproxyError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return exc.exit_code
    print(json.dumps(tuned.record.model_dump(mode="json")))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
