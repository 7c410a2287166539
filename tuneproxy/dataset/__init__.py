"""Datasets: load, validate, convert and split training examples."""

from tuneproxy.dataset.examples import Example, detect_format
from tuneproxy.dataset.findings import CODES, Finding
from tuneproxy.dataset.validate import Report, load_examples, validate

__all__ = ["CODES", "Example", "Finding", "Report", "detect_format", "load_examples", "validate"]
