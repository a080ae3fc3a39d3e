"""Latency histograms with fixed log-spaced buckets: summed across gateways, read as quantiles.

Bucket `i` holds answers that took [FIRST_MS * 2^(i/4), FIRST_MS * 2^((i+1)/4)) ms: four
buckets per doubling (each ~19% wide), from 0.1 ms up to about 55 minutes (the last bucket
also takes anything slower, the first anything faster). Because the edges are fixed, two
gateways' histograms add bucket by bucket, and a quantile of the sum is the quantile of all
their answers to within one bucket's width.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

FIRST_MS = 0.1
PER_DOUBLING = 4
BUCKETS = 100


def bucket_of(latency_ms: float) -> int:
    """The bucket of one answer's latency."""
    if not latency_ms > FIRST_MS:
        return 0
    return min(BUCKETS - 1, int(PER_DOUBLING * math.log2(latency_ms / FIRST_MS)))


def middle_ms(bucket: int) -> float:
    """The geometric middle of a bucket: what a quantile falling in it reads as."""
    return FIRST_MS * 2 ** ((bucket + 0.5) / PER_DOUBLING)


def quantile_ms(histogram: Mapping[int, int], q: float) -> float | None:
    """The q-quantile (0 < q <= 1) of the answers counted in `histogram`; None when empty."""
    total = sum(histogram.values())
    if total <= 0:
        return None
    rank = q * total  # the answer at this rank (1-based, rounded up) is the quantile
    seen = 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= rank:
            return middle_ms(bucket)
    return middle_ms(max(histogram))


def merged(histograms: Iterable[Mapping[int, int]]) -> dict[int, int]:
    """Bucket-wise sums."""
    out: dict[int, int] = {}
    for histogram in histograms:
        for bucket, count in histogram.items():
            out[bucket] = out.get(bucket, 0) + count
    return out
