"""Checks of one example against the common rules and a service's own :class:`DatasetRules`.

Each check appends findings with a JSON path (``messages[2].weight``) and advice. The rules come in as
data, so this module never needs to know which service it is checking for.
"""

from __future__ import annotations

import json
import re
from typing import Any

from tuneproxy.contract import DatasetRules
from tuneproxy.dataset.examples import FORMAT_KEYS, OPTIONAL_KEYS, detect_format
from tuneproxy.dataset.findings import Finding, finding

KNOWN_MESSAGE_KEYS = frozenset(
    {"role", "content", "name", "weight", "tool_calls", "tool_call_id", "function_call", "refusal",
     "reasoning_content"}
)
CONTENT_PART_TYPES = frozenset({"text", "image_url", "input_audio", "file", "refusal"})

# Secrets, matched in lower-cased text and only where one of their literal starts occurs: support
# tickets say "password" and "API key" all the time, and a regex tried at every position of every text
# would cost more than counting the tokens.
_SECRET_STARTS = ("sk-", "r8_", "fw_", "tgp_", "akia", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "xox",
                  "-----begin", "passw", "api_key", "api-key", "apikey")
_SECRET_AT = re.compile(
    r"sk-(?:proj-)?[a-z0-9_\-]{20,}|r8_[a-z0-9]{20,}|fw_[a-z0-9]{20,}|tgp_v1_[a-z0-9_\-]{20,}"
    r"|akia[0-9a-z]{16}|gh[pousr]_[a-z0-9]{30,}|xox[abpr]-[a-z0-9\-]{10,}|-----begin [a-z ]*private key-----"
    r"|(?:password|passwd|api[_-]?key)\s*[:=]\s*\S{6,}"
)
_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")
# A run of digits and separators long enough to be a phone number (starts with a charset, so the regex
# engine skips ahead fast), then the strict shape checked on that run only.
_PHONE_CANDIDATE = re.compile(r"[+(\d][\d\s().\-]{8,18}\d")
_PHONE = re.compile(
    r"(?<![\w#])(?:\+\d{1,3}[\s.\-]?)?(?:\(\d{2,4}\)[\s.\-]?|\d{3}[\s.\-])\d{3}[\s.\-]\d{4}(?![\w])"
)


class ExampleChecker:
    """Validates examples one at a time; remembers the file's format to catch a mix."""

    def __init__(self, rules: DatasetRules, service: str = "the target service",
                 expected_format: tuple[str, int] | None = None) -> None:
        self.rules = rules
        self.service = service
        # a checker for a later part of a file is told the format the file started with, and where
        self.format, self.format_line = expected_format or (None, 0)

    def check(self, obj: dict[str, Any], line: int) -> tuple[str | None, list[Finding]]:
        """The example's format (None if unusable) and its findings."""
        out: list[Finding] = []
        fmt = detect_format(obj)
        if fmt is None:
            out.append(finding("unknown-format", line, "", "This object has none of the keys of a known "
                               "format: `messages` (chat), `prompt`+`completion`, `input`+`preferred_output`+"
                               f"`non_preferred_output` (preference) or `text`. Keys found: {sorted(obj)}."))
            return None, out
        if self.format is None:
            self.format, self.format_line = fmt, line
            if fmt not in self.rules.formats:
                out.append(finding("format-not-supported", line, "", f"{self.service} does not train on "
                                   f"{fmt} data; it accepts {', '.join(sorted(self.rules.formats))}."))
        elif fmt != self.format:
            out.append(finding("mixed-formats", line, "", f"This line is {fmt} but the file started as "
                               f"{self.format} on line {self.format_line}; a file must use one format."))
            return None, out
        self._keys(obj, fmt, line, out)
        metadata = obj.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            out.append(finding("metadata-invalid", line, "metadata", "`metadata` must be an object, e.g. "
                               '{"category": "billing"}.'))
        if fmt == "chat":
            self._chat(obj, line, out)
        elif fmt == "preference":
            self._preference(obj, line, out)
        else:
            for key in FORMAT_KEYS[fmt]:
                value = obj.get(key)
                if not isinstance(value, str) or not value.strip():
                    out.append(finding("field-invalid", line, key, f"`{key}` must be a non-empty string, got "
                                       f"{_describe(value)}."))
        return fmt, out

    # -- keys -----------------------------------------------------------------------------------------
    def _keys(self, obj: dict, fmt: str, line: int, out: list[Finding]) -> None:
        allowed = (self.rules.example_keys or (FORMAT_KEYS[fmt] | OPTIONAL_KEYS[fmt])) | {"metadata"}
        severity = "error" if self.rules.unknown_example_key_is_error else "warning"
        for key in obj:
            if key not in allowed:
                other = next((name for name, keys in FORMAT_KEYS.items() if key in keys), None)
                why = f" (it belongs to the {other} format; a line must match one format)" if other else ""
                out.append(finding("unknown-key", line, key, f"Unknown key `{key}`{why}; remove it or move it "
                                   "into `metadata`.", severity))

    # -- chat -----------------------------------------------------------------------------------------
    def _chat(self, obj: dict, line: int, out: list[Finding]) -> None:
        messages = obj.get("messages")
        if not isinstance(messages, list) or not messages:
            out.append(finding("messages-invalid", line, "messages", "`messages` must be a non-empty list "
                               f"of message objects, got {_describe(messages)}."))
            return
        if "tools" in obj:
            self._tools(obj["tools"], line, out)
        self._messages(messages, line, "messages", out, need_assistant=True)

    def _messages(self, messages: list, line: int, base: str, out: list[Finding], need_assistant: bool) -> None:
        rules = self.rules
        learnable = False
        previous_role = None
        call_ids: set[str] = set()
        for i, msg in enumerate(messages):
            path = f"{base}[{i}]"
            if not isinstance(msg, dict):
                out.append(finding("messages-invalid", line, path, f"Each message must be an object, got "
                                   f"{_describe(msg)}."))
                continue
            role = msg.get("role")
            if not isinstance(role, str) or role not in rules.roles:
                out.append(finding("role-invalid", line, f"{path}.role", f"Role {role!r} is not accepted; use "
                                   f"one of {', '.join(sorted(rules.roles))}."))
                continue
            self._message_keys(msg, line, path, out)
            has_content = self._content(msg, role, line, path, out)
            self._weight(msg, role, line, path, out)
            if role == "assistant":
                call_ids.update(self._tool_calls(msg, line, path, out))
                if has_content and msg.get("weight", 1) != 0:
                    learnable = True
            if role == "tool" and not _answers(msg.get("tool_call_id"), call_ids):
                out.append(finding("tool-call-invalid", line, f"{path}.tool_call_id", "A tool message must "
                                   "answer an earlier assistant tool call: set `tool_call_id` to that call's id."))
            if role == "system" and i > 0 and rules.system_only_first:
                out.append(finding("system-not-first", line, f"{path}.role", f"{self.service} accepts a system "
                                   "message only as the first message; move or merge it."))
            if rules.roles_must_alternate and role in ("user", "assistant"):
                if role == previous_role:
                    out.append(finding("roles-not-alternating", line, f"{path}.role", f"Two {role} messages "
                                       "in a row; merge them so user and assistant alternate."))
                previous_role = role
            elif role == "tool":
                previous_role = None  # a tool result sits between the call and the assistant's follow-up
        if need_assistant and not learnable:
            out.append(finding("no-assistant-turn", line, base, "No assistant message with content and weight "
                               "1: there is nothing to learn. Add the answer as an assistant message."))

    def _message_keys(self, msg: dict, line: int, path: str, out: list[Finding]) -> None:
        known = self.rules.message_keys or KNOWN_MESSAGE_KEYS
        unknown = msg.keys() - known
        if not unknown:
            return
        severity = "error" if self.rules.unknown_message_key_is_error else "warning"
        for key in sorted(unknown):
            if key not in known:
                out.append(finding("unknown-message-key", line, f"{path}.{key}", f"Unknown message key `{key}`;"
                                   f" {self.service} accepts {', '.join(sorted(known))}.", severity))

    def _content(self, msg: dict, role: str, line: int, path: str, out: list[Finding]) -> bool:
        content = msg.get("content")
        if content is None and role == "assistant" and msg.get("tool_calls"):
            return False
        if isinstance(content, str):
            if content.strip():
                return True
        elif isinstance(content, list) and content:
            return self._parts(content, line, f"{path}.content", out)
        out.append(finding("content-invalid", line, f"{path}.content", "Content must be a non-empty string or a "
                           f"list of content parts, got {_describe(content)}."))
        return False

    def _parts(self, parts: list, line: int, path: str, out: list[Finding]) -> bool:
        ok = True
        for j, part in enumerate(parts):
            ppath = f"{path}[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if not isinstance(kind, str) or kind not in CONTENT_PART_TYPES:
                out.append(finding("content-invalid", line, ppath, "A content part must be an object with "
                                   f"`type` one of {', '.join(sorted(CONTENT_PART_TYPES))}."))
                ok = False
            elif kind == "text" and not (isinstance(part.get("text"), str) and part["text"].strip()):
                out.append(finding("content-invalid", line, f"{ppath}.text", "A text part needs a non-empty "
                                   "`text` string."))
                ok = False
            elif kind == "image_url" and not _is_image(part.get("image_url")):
                out.append(finding("content-invalid", line, f"{ppath}.image_url", "An image part needs "
                                   '`image_url: {"url": "..."}`.'))
                ok = False
        return ok

    def _weight(self, msg: dict, role: str, line: int, path: str, out: list[Finding]) -> None:
        if "weight" not in msg:
            return
        weight = msg["weight"]
        if type(weight) is not int or weight not in (0, 1):
            out.append(finding("weight-invalid", line, f"{path}.weight", f"`weight` must be the integer 0 or 1, "
                               f"got {json.dumps(weight)}; {self.service} rejects other values (even 1.0)."))
        if role not in self.rules.weight_roles:
            out.append(finding("weight-not-allowed", line, f"{path}.weight", f"{self.service} accepts `weight` "
                               f"only on {', '.join(sorted(self.rules.weight_roles))} messages; remove it from "
                               f"this {role} message."))

    def _tool_calls(self, msg: dict, line: int, path: str, out: list[Finding]) -> set[str]:
        calls = msg.get("tool_calls")
        if calls is None:
            return set()
        ids: set[str] = set()
        if not isinstance(calls, list) or not calls:
            out.append(finding("tool-call-invalid", line, f"{path}.tool_calls", "`tool_calls` must be a "
                               "non-empty list."))
            return ids
        for k, call in enumerate(calls):
            cpath = f"{path}.tool_calls[{k}]"
            fn = call.get("function") if isinstance(call, dict) else None
            problem = None
            if not isinstance(call, dict) or not isinstance(call.get("id"), str):
                problem = "needs a string `id`"
            elif not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
                problem = "needs `function.name`"
            elif not isinstance(fn.get("arguments"), str):
                problem = "needs `function.arguments` as a JSON string"
            else:
                try:
                    json.loads(fn["arguments"])
                except ValueError:
                    problem = "has `function.arguments` that is not valid JSON"
                except RecursionError:
                    problem = "has `function.arguments` nested too deeply to read as JSON"
            if problem:
                out.append(finding("tool-call-invalid", line, cpath, f"This tool call {problem}."))
            else:
                ids.add(call["id"])
        return ids

    def _tools(self, tools: Any, line: int, out: list[Finding]) -> None:
        if not isinstance(tools, list):
            out.append(finding("tools-invalid", line, "tools", "`tools` must be a list of function tools."))
            return
        for i, tool in enumerate(tools):
            fn = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                out.append(finding("tools-invalid", line, f"tools[{i}]", 'Each tool must look like {"type": '
                                   '"function", "function": {"name": ..., "parameters": {...}}}.'))

    # -- preference -----------------------------------------------------------------------------------
    def _preference(self, obj: dict, line: int, out: list[Finding]) -> None:
        inp = obj.get("input")
        messages = inp.get("messages") if isinstance(inp, dict) else None
        if not isinstance(messages, list) or not messages:
            out.append(finding("preference-input-invalid", line, "input.messages", "`input` must be an object "
                               "with a non-empty `messages` list."))
        else:
            self._messages(messages, line, "input.messages", out, need_assistant=False)
            last = messages[-1]
            if isinstance(last, dict) and last.get("role") == "assistant":
                out.append(finding("preference-input-invalid", line, f"input.messages[{len(messages) - 1}]",
                                   "The last input message must not be an assistant message: the outputs "
                                   "are the assistant's answer."))
        for key in ("preferred_output", "non_preferred_output"):
            value = obj.get(key)
            ok = (isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict)
                  and value[0].get("role") == "assistant")
            if not ok:
                out.append(finding("preference-output-invalid", line, key, f"`{key}` must be a list of exactly "
                                   'one assistant message, e.g. [{"role": "assistant", "content": "..."}].'))
            else:
                self._content(value[0], "assistant", line, f"{key}[0]", out)


def _is_image(image: Any) -> bool:
    return isinstance(image, dict) and isinstance(image.get("url"), str)


def _answers(call_id: Any, call_ids: set[str]) -> bool:
    """Whether a tool message's ``tool_call_id`` names an earlier call (any other JSON value names none)."""
    return isinstance(call_id, str) and call_id in call_ids


def scan_text(text: str, line: int, path: str) -> list[Finding]:
    """Warnings for secrets and personal data in one piece of training text."""
    out = []
    if _has_secret(text.lower()):
        out.append(finding("secret-in-text", line, path, "This text looks like it holds an API key or password."
                           " Remove or mask it: the model could learn and repeat it."))
    if "@" in text and _EMAIL.search(text):
        out.append(finding("email-in-text", line, path, "An e-mail address; mask personal data (e.g. "
                           "<email>) unless the model must learn it."))
    if _has_phone(text):
        out.append(finding("phone-in-text", line, path, "A phone number; mask personal data (e.g. <phone>) "
                           "unless the model must learn it."))
    return out


def _has_secret(lowered: str) -> bool:
    for start in _SECRET_STARTS:
        at = lowered.find(start)
        while at != -1:
            if _SECRET_AT.match(lowered, at):
                return True
            at = lowered.find(start, at + 1)
    return False


def _has_phone(text: str) -> bool:
    for candidate in _PHONE_CANDIDATE.finditer(text):
        start = max(0, candidate.start() - 1)
        if _PHONE.search(text, start, min(len(text), candidate.end() + 1)):
            return True
    return False


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, str):
        return "an empty string" if not value.strip() else "a string"
    if isinstance(value, bool):
        return f"the boolean {json.dumps(value)}"
    if isinstance(value, (int, float)):
        return f"the number {json.dumps(value)}"
    if isinstance(value, list):
        return "an empty list" if not value else "a list"
    return f"a {type(value).__name__}"
