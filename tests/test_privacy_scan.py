"""Secrets and personal data in training text are warned about; ordinary support wording is not."""

from __future__ import annotations

import pytest

from tuneproxy.dataset.rules import scan_text


@pytest.mark.parametrize("text", [
    "my password: hunter2hunter",
    "Password = s3cretvalue!",
    "use key sk-proj-abcdefghijklmnopqrstuvwxyz0123",
    "AWS AKIAABCDEFGHIJKLMNOP leaked",
    "token ghp_abcdefghijklmnopqrstuvwxyz0123456789",
    "-----BEGIN RSA PRIVATE KEY-----",
    "API_KEY=abcd1234efgh",
])
def test_secret_shapes_are_flagged(text):
    assert [f.code for f in scan_text(text, 1, "x")] == ["TP601"]


@pytest.mark.parametrize("text", [
    "reset my password please",
    "how do I rotate an api key?",
    "task-based desk-top workflow",
    "order #A12345 arrived on 2026-11-02",
    "Ticket 48213: charged twice, $240.99",
])
def test_ordinary_support_text_is_not_flagged(text):
    assert scan_text(text, 1, "x") == []


@pytest.mark.parametrize("text,code", [
    ("write to jane.doe@example.com", "TP602"),
    ("call +1 415 555 0134 today", "TP603"),
    ("call (415) 555-0134 today", "TP603"),
])
def test_personal_data_is_flagged(text, code):
    assert [f.code for f in scan_text(text, 1, "x")] == [code]
