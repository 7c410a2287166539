"""A sentinel key, taken from the environment as a user would set it, through every command and every
failure path against a service on 127.0.0.1 that sends it back in its error messages: it appears in no
output, no file under the home, no exception and no repr; what tuneproxy writes is private to its user.

The keys have no recognisable prefix (a key of an older or newer format): only their value can be scrubbed.
"""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest

from tests.fit_helpers import MODELS, SAMPLE, before_the_sunset
from tests.reliability.fake_service import SERVICES, FakeService
from tuneproxy import Tuner, cli
from tuneproxy.errors import TuneproxyError

KEY = "5e9a1c7d3b8f2e6a4c0d9b7f1e3a5c8d2b6f0e4a7c1d9b3f5e8a2c6d0b4f7e1a"
KEY_VARIABLE = {"openai": "OPENAI_API_KEY", "together": "TOGETHER_API_KEY"}
FRAGMENTS = [KEY[i:i + 12] for i in range(0, len(KEY) - 12, 6)]  # a key cut short is still a leak


def leaks(text: str) -> list[str]:
    return [fragment for fragment in FRAGMENTS if fragment in text]


class Session:
    """The CLI run in-process, as the user would type it; every output kept for the final scan."""

    def __init__(self, capsys: pytest.CaptureFixture[str], provider: str, service: FakeService) -> None:
        self.capsys, self.provider, self.service = capsys, provider, service
        self.outputs: list[str] = []

    def run(self, *args: str) -> tuple[int, str, str]:
        sys.argv = ["tuneproxy", *args]
        try:
            cli.main()
            code = 0
        except SystemExit as exit_info:
            code = exit_info.code if isinstance(exit_info.code, int) else 1
        out, err = self.capsys.readouterr()
        self.outputs += [out, err]
        assert "Traceback" not in err and "internal error" not in err, err
        return code, out, err

    def fit(self, *extra: str) -> tuple[int, str, str]:
        return self.run("fit", str(SAMPLE), "--provider", self.provider, "--model", MODELS[self.provider],
                        "--holdout", "0.1", "--epochs", "3", "--suffix", "support-bot", "--poll-interval", "0",
                        "-o", f"base_url={self.service.base_url}", *extra)


def echo(status: int, text: str):
    """A service that answers every request with ``status`` and the Authorization header it was sent."""
    def override(method: str, path: str, authorization: str):
        return status, {"content-type": "text/html" if text.startswith("<") else "application/json"}, (
            text.format(auth=authorization))
    return override


@pytest.fixture(autouse=True)
def sunset_not_passed(monkeypatch):
    """OpenAI's fine-tuning sunset must not turn every OpenAI fit here into a refusal after that date."""
    monkeypatch.setitem(Tuner.__init__.__kwdefaults__, "clock", before_the_sunset)


@pytest.mark.filterwarnings("ignore::tuneproxy.tuner.DatasetWarning")
@pytest.mark.filterwarnings("ignore::tuneproxy.tuner.SunsetWarning")
@pytest.mark.parametrize("provider", list(KEY_VARIABLE))  # the services the fake speaks
def test_the_key_is_in_no_output_file_or_exception_through_every_command_and_failure(
        provider, capsys, monkeypatch, isolated_home):
    monkeypatch.setenv(KEY_VARIABLE[provider], KEY)
    with SERVICES[provider]() as service:
        session = Session(capsys, provider, service)
        assert session.run("providers")[0] == 0
        assert session.run("validate", str(SAMPLE), "--provider", provider)[0] == 0
        assert session.run("estimate", str(SAMPLE), "--provider", provider, "--model", MODELS[provider])[0] == 0
        code, out, _ = session.fit("--json")
        assert code == 0, out
        done = json.loads(out)["job_id"]
        code, out, _ = session.fit("--new", "--no-wait", "--json")
        assert code == 0
        running = json.loads(out)["job_id"]
        for args in (["list"], ["list", "--json"], ["show", done], ["show", done, "--json"], ["events", done],
                     ["events", done, "--json"], ["wait", done], ["cancel", running], ["show", running]):
            assert session.run("jobs", *args)[0] == 0, args
        assert session.run("deployments", "list")[0] == 0

        # the failure paths: the service sends the key back in every way it can
        service.override = echo(401, '{{"error": {{"message": "Incorrect API key provided: {auth}", '
                                     '"type": "invalid_request_error", "code": "invalid_api_key"}}}}')
        assert session.run("jobs", "show", running)[0] == 3
        assert session.fit("--new")[0] == 3
        service.override = echo(500, "<html><body>upstream error for {auth}</body></html>")
        assert session.run("jobs", "events", running)[0] == 3
        service.override = echo(200, '{{"id": "{auth}", "sta')  # cut-off JSON that starts with the key
        assert session.run("jobs", "show", running)[0] == 3
        service.override = None
        service.failure = f"Training file rejected: account {KEY} is over its quota"
        code, _, err = session.fit("--new")
        assert code == 3 and "over its quota" in err
        assert session.run("jobs", "list", "--json")[0] == 0
        assert session.run("fit", str(SAMPLE), "--provider", provider, "--model", MODELS[provider],
                           "-o", f"base_urll={KEY}")[0] == 2

        # the library: what a script sees of a failure, and the objects it holds
        service.override = echo(401, '{{"error": {{"message": "bad key {auth}"}}}}')
        tuner = Tuner(provider, MODELS[provider], epochs=1, poll_interval=0, show_progress=False,
                      provider_options={"base_url": service.base_url})
        with pytest.raises(TuneproxyError) as caught:
            tuner.fit(SAMPLE, holdout=0.1, resubmit=True)
        exc = caught.value
        seen = [str(exc), repr(exc), repr(exc.args), repr(vars(exc)), repr(tuner), repr(tuner.provider),
                repr(tuner.provider.options), repr(tuner.ledger.jobs())]
        while exc.__cause__ or exc.__context__:
            exc = exc.__cause__ or exc.__context__
            seen.append(repr(exc))

    for text in session.outputs + seen:
        assert not leaks(text), text
    for path in Path(isolated_home).rglob("*"):
        if path.is_file():
            assert not leaks(path.read_bytes().decode("latin-1")), path
    assert "REDACTED" in "".join(session.outputs)  # the echoes did reach the output, scrubbed
    assert stat.S_IMODE(isolated_home.stat().st_mode) == 0o700
    for path in isolated_home.glob("state.db*"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
