"""DDSketch: a mergeable quantile sketch with a relative-error guarantee.

Values land in logarithmic buckets ``ceil(log_gamma(x))`` with
``gamma = (1 + a) / (1 - a)``, so any quantile it returns is within a relative
error ``a`` (default 1 %) of a value at that rank. Two sketches with the same
accuracy merge by adding bucket counts, which is what lets windows roll up
(10 s buckets into 1 min and 5 min windows) and partial results of several
workers combine exactly as if one process had seen every value.
(Masson, Rim, Lee: "DDSketch", VLDB 2019.)
"""

from __future__ import annotations

import math
import struct
from typing import Any

_HEAD = struct.Struct("<BdQI")  # format version, accuracy, zero count, bucket count
_BUCKET = struct.Struct("<iI")


class SketchError(ValueError):
    """Bytes that are not a sketch, or sketches of different accuracy merged."""


class DDSketch:
    __slots__ = ("_gamma_ln", "accuracy", "buckets", "count", "zeros")

    def __init__(self, accuracy: float = 0.01) -> None:
        if not 0 < accuracy < 1:
            raise SketchError(f"accuracy must be in (0, 1), got {accuracy}")
        self.accuracy = accuracy
        self._gamma_ln = math.log((1 + accuracy) / (1 - accuracy))
        self.buckets: dict[int, int] = {}
        self.zeros = 0  # values <= 0 (latencies are never negative; poison is refused upstream)
        self.count = 0

    def add(self, value: float) -> None:
        self.count += 1
        if value <= 0.0:
            self.zeros += 1
            return
        key = math.ceil(math.log(value) / self._gamma_ln)
        buckets = self.buckets
        buckets[key] = buckets.get(key, 0) + 1

    def merge(self, other: DDSketch) -> None:
        if other.accuracy != self.accuracy:
            raise SketchError(f"cannot merge sketches of accuracy {self.accuracy} and {other.accuracy}")
        for key, n in other.buckets.items():
            self.buckets[key] = self.buckets.get(key, 0) + n
        self.zeros += other.zeros
        self.count += other.count

    def quantile(self, q: float) -> float | None:
        """Value at quantile ``q`` in [0, 1]; None for an empty sketch."""
        if self.count == 0:
            return None
        rank = q * (self.count - 1)
        seen = self.zeros
        if rank < seen:
            return 0.0
        for key in sorted(self.buckets):
            seen += self.buckets[key]
            if seen > rank:
                # Midpoint (in relative terms) of bucket (gamma^(k-1), gamma^k].
                return 2 * math.exp(key * self._gamma_ln) / (1 + math.exp(self._gamma_ln))
        return 2 * math.exp(max(self.buckets) * self._gamma_ln) / (1 + math.exp(self._gamma_ln))

    # -- transport -----------------------------------------------------------
    def to_bytes(self) -> bytes:
        parts = [_HEAD.pack(1, self.accuracy, self.zeros, len(self.buckets))]
        parts.extend(_BUCKET.pack(k, n) for k, n in sorted(self.buckets.items()))
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> DDSketch:
        try:
            version, accuracy, zeros, n = _HEAD.unpack_from(data)
            if version != 1 or len(data) != _HEAD.size + n * _BUCKET.size:
                raise SketchError(f"not a DDSketch v1 ({len(data)} bytes)")
            sketch = cls(accuracy)
            for i in range(n):
                key, c = _BUCKET.unpack_from(data, _HEAD.size + i * _BUCKET.size)
                sketch.buckets[key] = c
        except struct.error as exc:
            raise SketchError(f"not a DDSketch: {exc}") from exc
        sketch.zeros = zeros
        sketch.count = zeros + sum(sketch.buckets.values())
        return sketch

    def to_json(self) -> dict[str, Any]:
        return {"a": self.accuracy, "z": self.zeros, "b": [[k, n] for k, n in sorted(self.buckets.items())]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DDSketch:
        sketch = cls(float(data["a"]))
        sketch.zeros = int(data["z"])
        sketch.buckets = {int(k): int(n) for k, n in data["b"]}
        sketch.count = sketch.zeros + sum(sketch.buckets.values())
        return sketch
