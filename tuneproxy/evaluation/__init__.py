"""Evaluation: the tuned model against its base, a prompted baseline and any other endpoint, on held-out
data, per slice, with intervals — the same way for every backend (this package never names a service)."""
