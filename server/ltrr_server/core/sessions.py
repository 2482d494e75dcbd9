"""Search sessions the server keeps for autocompletion: session id -> its last queries, a bounded LRU.

>>> from ltrr_server.config import Limits
>>> sessions = Sessions(Limits(max_sessions=2, max_session_queries=2))
>>> sessions.record("s1", "Jazz  Piano"), sessions.record("s1", "blues"), sessions.record("s1", "rock")
(1, 2, 2)
>>> sessions.history("s1")
['blues', 'rock']
>>> _ = sessions.record("s2", "a"), sessions.record("s3", "b")
>>> sessions.history("s1")  # the least recently used session went first
[]
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from ltrr_server.bounds import ID_CHARS
from ltrr_server.catalog.catalog import normalize
from ltrr_server.config import Limits
from ltrr_server.errors import InvalidArgument
from ltrr_server.tenancy import INSIDE_CHARS

# Characters kept of each query of a session: the autocompletion reads a previous query's words,
# not a paragraph. With the default limits (100,000 sessions of 5 queries) the sessions hold at
# most 64M characters, about 110 MB, whatever clients send.
KEPT_QUERY_CHARS = 128


class Sessions:
    """Bounded by ``limits.max_sessions`` sessions of ``limits.max_session_queries`` queries, each
    kept to its first ``KEPT_QUERY_CHARS`` characters (normalized)."""

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._sessions: OrderedDict[str, list[str]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def record(self, session_id: str, query: str) -> int:
        """Adds a submitted query to a session; returns the session's length."""
        check_session_id(session_id, required=True)
        text = self.checked_query(query, "query")
        history = (self._sessions.get(session_id, []) + [text])[-self._limits.max_session_queries:]
        self.remember(session_id, history)
        return len(history)

    def checked_query(self, query: str, field: str) -> str:
        """The query normalized, or InvalidArgument naming the field."""
        if len(query) > self._limits.max_query_chars:
            raise InvalidArgument(field, f"{len(query)} characters, more than limits.max_query_chars="
                                         f"{self._limits.max_query_chars}")
        text = normalize(query)
        if not text:
            raise InvalidArgument(field, "is empty (or has no letters or digits)")
        return text[:KEPT_QUERY_CHARS]

    def from_request(self, previous: Sequence[str], session_id: str) -> list[str]:
        """The previous queries a request sends (then kept under its session id), or its session's."""
        check_session_id(session_id, required=False)
        if not previous:
            return self.history(session_id) if session_id else []
        if len(previous) > self._limits.max_previous_queries:
            raise InvalidArgument("previous_queries", f"{len(previous)} queries, more than "
                                  f"limits.max_previous_queries={self._limits.max_previous_queries}")
        for i, q in enumerate(previous):
            if len(q) > self._limits.max_query_chars:
                raise InvalidArgument(f"previous_queries[{i}]", f"{len(q)} characters, more than "
                                      f"limits.max_query_chars={self._limits.max_query_chars}")
        history = [normalize(q)[:KEPT_QUERY_CHARS] for q in previous][-self._limits.max_session_queries:]
        if session_id:
            self.remember(session_id, history)
        return history

    def history(self, session_id: str) -> list[str]:
        return self._sessions.get(session_id, [])

    def remember(self, session_id: str, history: list[str]) -> None:
        self._sessions[session_id] = history
        self._sessions.move_to_end(session_id)
        while len(self._sessions) > self._limits.max_sessions:  # the least recently used go first
            self._sessions.popitem(last=False)


def check_session_id(session_id: str, required: bool, limit: int = INSIDE_CHARS) -> None:
    """A session id: a client's at most ID_CHARS characters; the server's, with its tenant, longer."""
    if required and not session_id:
        raise InvalidArgument("session_id", "is empty")
    if len(session_id) > limit:
        raise InvalidArgument("session_id", f"longer than {ID_CHARS} characters")
