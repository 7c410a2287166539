"""Streams a JSONL file (or records) one object at a time, reporting what is wrong with the file itself.

Memory stays constant whatever the file size: one line is held at a time, a line is read in chunks and
one over :data:`MAX_LINE_BYTES` is measured and skipped without ever being held whole, and file-level
findings that could repeat a million times (CRLF endings) are counted and reported once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from tuneproxy.dataset.findings import Finding, Findings, finding
from tuneproxy.errors import DataFileUnreadable, DatasetError

BOM = b"\xef\xbb\xbf"
VERY_LONG_LINE = 1_000_000
# A line past this is an error (``line-too-long``) and skipped unread: no training example is 16 MB of
# text, and holding such a line (a file pasted into a field, a dump with no newlines) is what exhausts
# memory. Lines are read CHUNK bytes at a time; one longer than a chunk is measured before it is read.
MAX_LINE_BYTES = 16 * 1024 * 1024
CHUNK = 1024 * 1024
# Lists and objects nested deeper than this are refused: real examples stay under 20 levels, and the steps
# after reading (duplicate fingerprints, conversion for upload) write records back with encoders that give
# up at a few hundred levels (orjson at 255) or at Python's recursion limit.
MAX_DEPTH = 100


class _NotFinite(ValueError):
    """A number no JSON reader of the services can hold: NaN, Infinity, or one past the double range."""


def _reject_constant(name: str) -> Any:
    raise _NotFinite(f"{name} is not valid JSON")


def _finite(text: str, kind: type) -> Any:
    # services read numbers as doubles; orjson refuses one that overflows, so the fallback must too
    if not math.isfinite(float(text)):
        raise _NotFinite(f"The number {text[:20]}{'…' if len(text) > 20 else ''} is too large to read")
    return kind(text)


_decoder = json.JSONDecoder(parse_constant=_reject_constant, parse_float=lambda text: _finite(text, float),
                            parse_int=lambda text: _finite(text, int))


def check_path(path: Path) -> None:
    """Raise a clear DatasetError if ``path`` cannot be read as a data file."""
    if not path.exists():
        raise DataFileUnreadable(f"{path}: no such file. Check the path, or create the file first.")
    if path.is_dir():
        raise DataFileUnreadable(f"{path} is a directory; give the path of a .jsonl file inside it.")
    if not path.is_file():  # a FIFO, socket or device would block or never end
        raise DataFileUnreadable(f"{path} is not a regular file (a pipe or a device?); save the data to a "
                                 ".jsonl file and give its path.")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise DataFileUnreadable(f"{path} cannot be read ({exc.strerror}); check its permissions.") from None


@dataclass(frozen=True)
class Span:
    """A slice of a file that starts at a line boundary: bytes ``[start, end)``, first line's number."""

    start: int = 0
    end: int | None = None
    first_line: int = 1


def split_spans(path: Path, parts: int) -> list[Span]:
    """Cut ``path`` into about ``parts`` spans at line boundaries, each knowing its first line number."""
    size = path.stat().st_size
    cuts = [0]
    with path.open("rb") as handle:
        for k in range(1, parts):
            handle.seek(max(size * k // parts, cuts[-1]))
            _rest_of_line(handle.readline)  # move to the start of the next line
            if handle.tell() < size:
                cuts.append(handle.tell())
        spans, line, previous = [], 1, 0
        for start, end in zip(cuts, cuts[1:] + [size]):
            line += _count_newlines(handle, previous, start)
            previous = start
            spans.append(Span(start, end if end < size else None, line))
    return spans


def _count_newlines(handle: Any, start: int, end: int, block: int = 1 << 20) -> int:
    """Newlines in bytes ``[start, end)``, read a block at a time so memory stays flat."""
    handle.seek(start)
    count = 0
    while start < end:
        data = handle.read(min(block, end - start))
        if not data:
            break
        count += data.count(b"\n")
        start += len(data)
    return count


def read_jsonl(path: Path, findings: Findings, span: Span = Span()) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line number, object)`` for every line that is a JSON object; report the rest.

    With a ``span``, only that slice is read (file-wide checks — binary, BOM, JSON array, empty — belong
    to the span that starts the file).
    """
    check_path(path)
    crlf_lines = 0
    first_crlf = 0
    seen_content = span.start > 0
    number = span.first_line - 1
    position = span.start
    with path.open("rb") as handle:
        head = handle.peek(8192)[:8192]
        if span.start == 0 and b"\x00" in head:  # git's heuristic: a NUL near the start means binary
            findings.add(finding("binary-file", 0, "",
                                 "The file contains NUL bytes: it is binary, not JSONL. Export your data as "
                                 "one JSON object per line."))
            return
        handle.seek(span.start)
        for raw, size in _lines(handle):
            if span.end is not None and position >= span.end:
                break
            position += size
            number += 1
            if raw.endswith(b"\r\n"):
                crlf_lines += 1
                first_crlf = first_crlf or number
            if size > MAX_LINE_BYTES:
                seen_content = True
                findings.add(finding("line-too-long", number, "", f"This line is {size:,} bytes, over the "
                                     f"{MAX_LINE_BYTES:,}-byte limit; it was skipped unread. Check it holds one "
                                     "example, not a whole dataset or a file pasted into a field."))
                continue
            if number == 1 and raw.startswith(BOM):
                raw = raw[len(BOM):]
                findings.add(finding("byte-order-mark", 1, "", "The file starts with a UTF-8 byte-order "
                                     "mark; it was skipped. Save the file as UTF-8 without BOM."))
            if b"\x00" in raw:
                findings.add(finding("binary-file", number, "", "The file contains NUL bytes: it is binary, "
                                     "not JSONL. Export your data as one JSON object per line."))
                return
            complete = raw.endswith(b"\n")
            body = raw.rstrip(b"\r\n")
            if not body.strip():
                if complete or body:
                    findings.add(finding("blank-line", number, "", "Blank line; remove it."))
                continue
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError as exc:
                seen_content = True  # not empty, only unreadable: TP003 says so, not TP001
                findings.add(finding("invalid-utf8", number, "", f"Byte {exc.start} of this line is not "
                                     "valid UTF-8. Re-save the file as UTF-8."))
                continue
            if len(body) > VERY_LONG_LINE:
                findings.add(finding("very-long-line", number, "", f"This line is {len(body):,} bytes; check "
                                     "it holds one example, not a whole dataset."))
            if not seen_content and text.lstrip().startswith("[") and _array_file(text, handle):
                findings.add(finding("json-array-file", number, "", "The file is a JSON array. Write one "
                                     "object per line instead, e.g. `jq -c '.[]' in.json > out.jsonl`."))
                return
            seen_content = True
            obj = _parse(text, number, complete, findings)
            if obj is None:
                continue
            if body.count(b"[") + body.count(b"{") > MAX_DEPTH and _deeper_than(obj, MAX_DEPTH):
                findings.add(finding("invalid-json", number, "", f"The line nests lists or objects more than "
                                     f"{MAX_DEPTH} levels deep. Flatten it to one example object."))
                continue
            yield number, obj
        # the span that starts the file speaks for the whole file, so it looks past its own end too
        if span.start == 0 and not seen_content and _blank_from(handle, position):
            findings.add(finding("empty-file", 0, "", "The file has no examples. Add one JSON object per line."))
    if crlf_lines:
        findings.add(crlf_finding(crlf_lines, first_crlf))


def crlf_finding(lines: int, first: int) -> Finding:
    """The one CRLF finding of a file (or of a span of it): how many lines, from the first one."""
    return finding("crlf-line-endings", first, "", f"{lines:,} lines end with CRLF (Windows line endings); they "
                   "were read fine, but convert with `dos2unix`.")


def crlf_lines(found: Finding) -> int:
    """How many lines a :func:`crlf_finding` counted (the number its message starts with)."""
    return int(found.message.split(" ", 1)[0].replace(",", ""))


def _blank_from(handle: Any, start: int, block: int = 1 << 20) -> bool:
    """True when the file holds nothing but whitespace from ``start`` on (read a block at a time)."""
    handle.seek(start)
    while data := handle.read(block):
        if data.strip():
            return False
    return True


def _lines(handle: Any) -> Iterator[tuple[bytes, int]]:
    """Each line from the handle's position as ``(bytes, size)``, never holding more than
    :data:`MAX_LINE_BYTES` of it: a line over that is measured a chunk at a time and yielded as its last
    two bytes only (enough to tell its line ending), with its full size."""
    readline = handle.readline
    while True:
        raw = readline(CHUNK)
        if len(raw) < CHUNK or raw.endswith(b"\n"):  # the whole line (or the end of the file)
            if not raw:
                return
            yield raw, len(raw)
            continue
        start = handle.tell() - len(raw)
        rest, tail = _rest_of_line(readline)
        size = len(raw) + rest
        if size > MAX_LINE_BYTES:
            yield (raw[-2:] + tail)[-2:], size
            continue
        handle.seek(start)  # long but allowed: now that its size is known, read it whole
        yield readline(size), size


def _rest_of_line(readline: Any) -> tuple[int, bytes]:
    """Read on to the start of the next line a chunk at a time, keeping only the count of bytes read and
    the last two of them."""
    count, tail = 0, b""
    while piece := readline(CHUNK):
        count += len(piece)
        tail = (tail + piece[-2:])[-2:]
        if piece.endswith(b"\n"):
            break
    return count, tail


def _array_file(first: str, handle: Any) -> bool:
    """True when the file is a JSON array rather than JSONL (peeks only at the first line)."""
    try:
        value = json.loads(first)
    except ValueError:
        return True  # a pretty-printed array: "[" then objects over many lines
    except RecursionError:
        return False  # nested too deeply to read at all: the line's own finding says so
    if not isinstance(value, list):
        return False
    return handle.peek(1) == b"" if hasattr(handle, "peek") else True


def _parse(text: str, number: int, complete: bool, findings: Findings) -> dict[str, Any] | None:
    try:
        obj = orjson.loads(text)  # strict JSON, several times faster than the stdlib
    except orjson.JSONDecodeError:
        obj = _explain(text, number, complete, findings)
        if obj is None:
            return None
    if not isinstance(obj, dict):
        findings.add(finding("not-an-object", number, "", f"The line is a JSON {type(obj).__name__}, not an "
                             "object. Each line must be one example object."))
        return None
    return obj


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether lists and objects nest more than ``limit`` levels in ``value`` (walked without recursion)."""
    stack = [(value, 1)] if isinstance(value, (dict, list)) else []
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def _explain(text: str, number: int, complete: bool, findings: Findings) -> Any:
    """The stdlib decoder, only for lines orjson rejected: it tells NaN from broken JSON, with columns."""
    try:
        value = _decoder.decode(text)
    except json.JSONDecodeError as exc:
        if not complete:
            findings.add(finding("truncated-last-line", number, "", "The last line ends mid-object (the file "
                                 "was cut off?). Complete or remove it."))
        else:
            findings.add(finding("invalid-json", number, "", f"Invalid JSON: {exc.msg} at column {exc.colno}."
                                 " Fix the line so it is one JSON object."))
        return None
    except _NotFinite as exc:
        findings.add(finding("non-finite-number", number, "", f"{exc}: replace it with a finite number "
                             "or null."))
        return None
    except RecursionError:
        findings.add(finding("invalid-json", number, "", "The line nests arrays or objects too deeply to read. "
                             "Flatten it to one example object."))
        return None
    if _lone_surrogate(value):  # what the stdlib accepts and orjson does not
        findings.add(finding("invalid-json", number, "", "The line holds a lone surrogate escape (such as "
                             "\\ud800), which is not valid text in any encoding. Remove it or escape the full pair."))
        return None
    return value


def _lone_surrogate(value: Any) -> bool:
    """Whether a key or string anywhere in ``value`` holds half a surrogate pair (walked without recursion)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def read_records(records: Iterable[Any], findings: Findings) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(position, object)`` from any iterable of dicts (positions count from 1 like lines)."""
    count = 0
    for count, obj in enumerate(records, start=1):
        if not isinstance(obj, dict):
            findings.add(finding("not-an-object", count, "", f"Record {count} is a {type(obj).__name__}, "
                                 "not a dict. Each record must be one example object."))
            continue
        yield count, obj
    if count == 0:
        findings.add(finding("empty-file", 0, "", "No examples were given."))


def iter_objects(source: str | Path | Iterable[Any], findings: Findings) -> Iterator[tuple[int, dict]]:
    """Objects from a JSONL path or from an iterable of dicts."""
    if isinstance(source, (str, Path)):
        return read_jsonl(Path(source), findings)
    if isinstance(source, dict):
        raise DatasetError("Pass a list of example dicts or a path to a .jsonl file, not a single dict.")
    return read_records(source, findings)
