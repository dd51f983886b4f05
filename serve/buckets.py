"""Batch-size buckets: the few batch sizes a GPU backend runs, so each can be captured once and replayed.

A batch of ``n`` images runs at the smallest bucket ``>= n``, its last row repeated to fill it (a repeated
real row keeps a class index in range, where zeros would not) and the padding dropped afterwards. Eval-mode
generators make each image from its own row only, so a seed's image does not depend on its bucket.
Plain numpy: the batcher and every backend share it, and it is tested where no GPU exists.
"""

from __future__ import annotations

import numpy as np


def buckets_up_to(max_batch: int) -> tuple[int, ...]:
    """Powers of two below ``max_batch``, then ``max_batch`` itself: 1, 2, 4, ..., max_batch."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1 (got {max_batch})")
    out, b = [], 1
    while b < max_batch:
        out.append(b)
        b *= 2
    return (*out, max_batch)


def bucket_for(n: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket that holds ``n`` rows (``n`` above the largest: a ValueError, callers split first)."""
    for b in sorted(buckets):
        if b >= n:
            return b
    raise ValueError(f"{n} rows exceed the largest bucket {max(buckets)}")


def pad_rows(arrays: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """Every array (one row per image, same length) with its last row repeated up to ``size`` rows."""
    n = len(next(iter(arrays.values())))
    pad = size - n
    if pad < 0:
        raise ValueError(f"cannot pad {n} rows down to {size}")
    if pad == 0:
        return arrays
    return {k: np.concatenate([v, np.repeat(v[-1:], pad, axis=0)]) for k, v in arrays.items()}


def chunks(n: int, largest: int) -> list[tuple[int, int]]:
    """``[start, stop)`` row ranges of at most ``largest`` rows covering ``n`` rows."""
    return [(i, min(i + largest, n)) for i in range(0, max(n, 1), largest)]
