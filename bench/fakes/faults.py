"""Which provider requests misbehave, and how: a reproducible plan keyed by the seed.

The decision for the n-th request about one recipient depends only on (seed, operation,
recipient, n), never on thread timing, so a seed replays the same misbehaviour per recipient.
At most ``max_streak`` faults in a row hit one recipient (one, by default): the run tests that
each kind of fault is recovered from, and a second one in a row would only lengthen the
product's exponential back-off (30 s, then 60 s...), not test anything new.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from collections.abc import Mapping
from typing import Final

__all__ = ["CREATE_FAULTS", "LOOKUP_FAULTS", "FaultPlan", "unit"]

#: Faults of a message-create request, with their relative weights. ``*_after_create`` answer
#: badly although the message was created: the realistic, dangerous case for a sender that
#: retries (the provider has no idempotency key).
CREATE_FAULTS: Final[Mapping[str, float]] = {
    "429": 0.25,
    "5xx_before_create": 0.15,
    "5xx_after_create": 0.15,
    "timeout_before_create": 0.10,
    "timeout_after_create": 0.15,
    "2xx_without_id": 0.20,
}

#: Faults of a read (Twilio's message list): nothing is created either way.
LOOKUP_FAULTS: Final[Mapping[str, float]] = {"429": 0.5, "5xx_before_create": 0.5}


def unit(*parts: object) -> float:
    """A uniform number in [0, 1) from the parts (stable across processes and runs)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _pick(weights: Mapping[str, float], u: float) -> str:
    total = sum(weights.values())
    edge = 0.0
    for name, weight in weights.items():
        edge += weight / total
        if u < edge:
            return name
    return next(reversed(list(weights)))


class FaultPlan:
    def __init__(self, seed: int, rate: float, max_streak: int = 1) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"fault rate must be within 0..1, not {rate}")
        self.seed = seed
        self.rate = rate
        self.max_streak = max_streak
        self._lock = threading.Lock()
        self._seen: Counter[tuple[str, str]] = Counter()
        self._streak: Counter[tuple[str, str]] = Counter()

    def decide(self, operation: str, recipient: str, faults: Mapping[str, float]) -> str | None:
        """The fault for the next ``operation`` request about ``recipient``, or None."""
        key = (operation, recipient)
        with self._lock:
            n = self._seen[key]
            self._seen[key] += 1
            if self._streak[key] >= self.max_streak:
                self._streak[key] = 0
                return None
            if unit(self.seed, "fault", operation, recipient, n) >= self.rate:
                self._streak[key] = 0
                return None
            self._streak[key] += 1
        return _pick(faults, unit(self.seed, "kind", operation, recipient, n))
