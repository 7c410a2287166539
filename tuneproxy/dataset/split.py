"""Holdout splits: deterministic, by fraction or count, optionally stratified by a metadata key."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

from tuneproxy.dataset.examples import Example
from tuneproxy.errors import ConfigError

SUGGESTED_HOLDOUT = (100, 200)


def holdout_size(n: int, size: float | int) -> int:
    """Examples to hold out of ``n``: a fraction in (0, 1) or a count."""
    if isinstance(size, float) and 0 < size < 1:
        count = round(n * size)
    elif isinstance(size, int) and size >= 0:
        count = size
    else:
        raise ConfigError(f"Holdout size {size!r} must be a fraction between 0 and 1 or a whole count.")
    if count >= n:
        raise ConfigError(f"A holdout of {count} leaves nothing to train on out of {n} examples; hold out "
                          f"fewer (guidance: {SUGGESTED_HOLDOUT[0]}–{SUGGESTED_HOLDOUT[1]}).")
    return count


def split_holdout(examples: Sequence[Example], size: float | int = 0.2, *, seed: int = 0,
                  stratify: str | None = None) -> tuple[list[Example], list[Example]]:
    """``(train, holdout)``. Same input and seed, same split. With ``stratify``, each value of that
    metadata key keeps its share in the holdout (every value with two or more examples is represented).
    """
    n = len(examples)
    count = holdout_size(n, size)
    rng = random.Random(seed)
    if not stratify:
        order = list(range(n))
        rng.shuffle(order)
        chosen = set(order[:count])
    else:
        chosen = _stratified(examples, count, rng, stratify)
    train = [ex for i, ex in enumerate(examples) if i not in chosen]
    holdout = [ex for i, ex in enumerate(examples) if i in chosen]
    return train, holdout


def _stratified(examples: Sequence[Example], count: int, rng: random.Random, key: str) -> set[int]:
    if not any(key in ex.metadata for ex in examples):
        raise ConfigError(f"No example has the metadata key {key!r} to stratify the holdout by; check the key "
                          "(it is looked up in each example's \"metadata\"), or split without stratify.")
    groups: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        groups[str(ex.metadata.get(key, "<none>"))].append(i)
    n = len(examples)
    chosen: set[int] = set()
    remainders = []
    for value in sorted(groups):
        members = groups[value]
        rng.shuffle(members)
        exact = count * len(members) / n
        take = min(int(exact), len(members) - 1) if len(members) > 1 else 0
        if take == 0 and len(members) > 1 and count >= len(groups):
            take = 1
        chosen.update(members[:take])
        remainders.append((exact - take, value, members[take:-1] if len(members) > 1 else []))
    # hand out what rounding left over to the groups that lost the most, deterministically
    for _, _, spare in sorted(remainders, key=lambda r: (-r[0], r[1])):
        if len(chosen) >= count:
            break
        if spare:
            chosen.add(spare[0])
    leftover = [i for i in range(n) if i not in chosen]
    rng.shuffle(leftover)
    chosen.update(leftover[: max(0, count - len(chosen))])
    return chosen
