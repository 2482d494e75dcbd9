"""Per-key quotas: token buckets for decisions and reward events per second, and open streams.

A bucket holds one second's worth of tokens and refills continuously. A request that costs more
than a whole bucket (a reward batch larger than the per-second rate) is let through once the bucket
is full and leaves it in debt, so the average rate holds and no batch is refused forever.

>>> b = TokenBucket(2, now=0.0)
>>> b.take(1, now=0.0), b.take(1, now=0.0), b.take(1, now=0.0)
(0.0, 0.0, 0.5)
>>> b.take(1, now=0.5)
0.0
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ltrr_server.keys import Identity


class TokenBucket:
    __slots__ = ("rate", "tokens", "stamp")

    def __init__(self, rate: float, now: float | None = None) -> None:
        self.rate = float(rate)
        self.tokens = self.rate
        self.stamp = time.monotonic() if now is None else now

    def take(self, n: float = 1.0, now: float | None = None) -> float:
        """Takes ``n`` tokens and answers 0.0, or takes none and answers the seconds until it could."""
        now = time.monotonic() if now is None else now
        self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        need = min(n, self.rate)
        if self.tokens >= need:
            self.tokens -= n
            return 0.0
        return (need - self.tokens) / self.rate


@dataclass
class _KeyUse:
    decisions: TokenBucket
    rewards: TokenBucket
    streams: int = 0


@dataclass
class QuotaBook:
    """What each key has used. Lives on the event loop: no locks."""

    _use: dict[str, _KeyUse] = field(default_factory=dict)

    def _of(self, who: Identity) -> _KeyUse:
        use = self._use.get(who.key_id)
        if use is None:
            assert who.quotas is not None
            use = self._use[who.key_id] = _KeyUse(TokenBucket(who.quotas.decisions_per_second),
                                                  TokenBucket(who.quotas.rewards_per_second))
        return use

    def take(self, who: Identity, quota: str, n: float = 1.0) -> float:
        """``quota`` is "decisions" or "rewards": 0.0 if taken, else the seconds to wait."""
        use = self._of(who)
        return (use.decisions if quota == "decisions" else use.rewards).take(n)

    def open_stream(self, who: Identity) -> bool:
        """Counts a stream opened, unless the key has ``max_streams`` open already (False)."""
        use = self._of(who)
        assert who.quotas is not None
        if use.streams >= who.quotas.max_streams:
            return False
        use.streams += 1
        return True

    def close_stream(self, who: Identity) -> None:
        self._use[who.key_id].streams -= 1
