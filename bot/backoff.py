"""The one backoff rule: exponential delays with jitter, capped. Used by every retry in the bot."""

from __future__ import annotations

import random


def backoff(attempt: int, *, base: float, cap: float, jitter: float = 0.1) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based): ``base · 2^(attempt-1)``, at
    most ``cap``, then spread by ``±jitter`` (a share of the delay) so that many waiters don't retry in step.
    """
    delay = min(cap, base * 2.0 ** (max(1, attempt) - 1))
    return max(0.0, delay * random.uniform(1.0 - jitter, 1.0 + jitter))
