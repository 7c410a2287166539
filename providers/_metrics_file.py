"""A training metrics file read defensively: the loss points of a file whose format the service does not
document (Fireworks' ``metricsFileSignedUrl``; see providers/fireworks.py for what is known of it).

JSON lines (a line that is not JSON is skipped), a JSON array, or CSV with a header; each row flat or with its
metrics under ``data``; the column names tried in order are below. Rows without a step or a loss are left out.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
from dataclasses import dataclass
from typing import Any

from tuneproxy.contract import JobEvent

from ._http import to_datetime

# Columns of the metrics file, first found wins (see the module docstring: the file is not documented).
STEP_KEYS = ("step", "train/step", "global_step", "train/global_step", "eval/step")
TRAIN_LOSS_KEYS = ("train/loss", "loss", "train_loss", "training_loss")
VALID_LOSS_KEYS = ("eval/loss", "eval_loss", "evaluation/loss", "validation/loss", "valid/loss", "val/loss",
                   "validation_loss", "val_loss")
EPOCH_KEYS = ("train/epoch", "epoch", "eval/epoch")


@dataclass
class MetricPoint:
    """One logged step of a Fireworks metrics file: its losses (training and, where logged, evaluation)."""

    step: int
    epoch: float | None = None
    train_loss: float | None = None
    valid_loss: float | None = None
    time: dt.datetime | None = None  # the row's own timestamp, when it has one

    def event(self, fallback: dt.datetime) -> JobEvent:
        losses = ", ".join(f"{name} loss={value:.4f}" for name, value in
                           (("training", self.train_loss), ("validation", self.valid_loss)) if value is not None)
        return JobEvent(id=f"metrics-{self.step}", time=self.time or fallback, message=f"Step {self.step}: {losses}",
                        step=self.step, epoch=self.epoch, train_loss=self.train_loss, valid_loss=self.valid_loss)


def metric_points(text: str) -> dict[int, MetricPoint]:
    """The loss points of a Fireworks metrics file by step, rows of one step merged (a later value of a
    field wins). Read defensively, as the format is not documented: JSON lines (a line that is not JSON is
    skipped), a JSON array, or CSV with a header; each row flat or with its metrics under ``data``; the step
    from :data:`STEP_KEYS`, losses from :data:`TRAIN_LOSS_KEYS` / :data:`VALID_LOSS_KEYS`, the epoch from
    :data:`EPOCH_KEYS`, the time from ``timestamp`` (unix seconds or ISO). Rows without a step or a loss
    are left out."""
    points: dict[int, MetricPoint] = {}
    for row in _metric_rows(text):
        data = row.get("data")
        values = {**row, **data} if isinstance(data, dict) else row
        step = _first_number(values, STEP_KEYS)
        train, valid = _first_number(values, TRAIN_LOSS_KEYS), _first_number(values, VALID_LOSS_KEYS)
        if step is None or step < 0 or (train is None and valid is None):
            continue
        point = points.setdefault(int(step), MetricPoint(int(step)))
        epoch = _first_number(values, EPOCH_KEYS)
        point.epoch = point.epoch if epoch is None else epoch
        point.train_loss = point.train_loss if train is None else train
        point.valid_loss = point.valid_loss if valid is None else valid
        point.time = point.time or _row_time(row.get("timestamp"))
    return points


def _metric_rows(text: str) -> list[dict[str, Any]]:
    text = text.lstrip("\ufeff").strip()
    if not text:
        return []
    if text.startswith("["):
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None
        if isinstance(whole, list):
            return [row for row in whole if isinstance(row, dict)]
    rows: list[dict[str, Any]] = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    if rows:
        return rows
    header = text.splitlines()[0].lower()
    if "," in header and any(key in header for key in STEP_KEYS):
        return [dict(row) for row in csv.DictReader(io.StringIO(text))]
    return []


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str) and value.strip():
        try:
            number = float(value)
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def _first_number(values: dict[str, Any], keys: tuple[str, ...]) -> float | None:
    for key in keys:
        number = _number(values.get(key))
        if number is not None:
            return number
    return None


def _row_time(value: Any) -> dt.datetime | None:
    """A row's ``timestamp`` as a datetime (unix seconds or an ISO string), or None."""
    seconds = _number(value)
    try:
        if seconds is not None:
            return to_datetime(seconds)
        return to_datetime(value) if isinstance(value, str) and value.strip() else None
    except (ValueError, OverflowError, OSError):
        return None
