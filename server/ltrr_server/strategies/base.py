"""The strategy interface, the query it receives, and the registry of strategy kinds.

A strategy takes a query and a budget and returns up to ``budget`` item positions, best first.
That is all the retriever needs; indexing and learning from rewards are optional extras,
declared by the ``Indexes`` and ``LearnsFromEngagement`` protocols.

>>> class Fixed:
...     name = kind = "fixed"
...     def retrieve(self, query: Query, budget: int) -> list[Hit]:
...         return [(0, 1.0)][:budget]
>>> isinstance(Fixed(), Strategy)
True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import sqlalchemy as sa

from ltrr_server.catalog.catalog import Catalog, Progress
from ltrr_server.errors import InvalidArgument

# (item position, score), best first.
Hit = tuple[int, float]


@dataclass(frozen=True)
class Query:
    text: str
    normalized: str
    tokens: tuple[str, ...]
    # The caller's query embedding, checked against the vector index (None: encode the text).
    embedding: np.ndarray[Any, np.dtype[np.float32]] | None = None


@runtime_checkable
class Strategy(Protocol):
    """One candidate generator."""

    name: str
    kind: str

    def retrieve(self, query: Query, budget: int) -> list[Hit]:
        """Up to ``budget`` items for the query, best first. Runs on a worker thread, unless the
        strategy sets a class attribute ``inline = True`` (quick, pure Python: it then runs on the
        event loop thread while the others run)."""
        ...


@runtime_checkable
class Indexes(Protocol):
    """A strategy with an index to bring up to date after an ingest."""

    def index(self, catalog: Catalog, positions: list[int], progress: Progress) -> None: ...


@runtime_checkable
class LearnsFromEngagement(Protocol):
    """A strategy that learns from what users engaged with (called on the event loop)."""

    def observe(self, query: str, engaged: list[int]) -> None: ...

    def flush(self) -> None:
        """Persists what was observed (called off the event loop)."""
        ...


@dataclass(frozen=True)
class StrategyEnv:
    """What a strategy may use: the catalog, a directory of its own, the SQL engine."""

    catalog: Catalog
    data_dir: Path
    engine: sa.Engine
    # The live trained models by name (``xmr.live.LiveModels``), for strategies that serve one.
    live_models: Any = None


class Params:
    """A strategy's parameters from the config, read with types and defaults; errors name the field.

    >>> p = Params("retrieval.strategies.lexical", {"popularity_prior": "high"})
    >>> p.number("popularity_prior", 0.5)
    Traceback (most recent call last):
    ...
    ltrr_server.errors.InvalidArgument: retrieval.strategies.lexical.popularity_prior: must be a number, got 'high'
    """

    def __init__(self, prefix: str, data: Mapping[str, Any]) -> None:
        self.prefix = prefix
        self._data = dict(data)
        self._read: set[str] = set()

    def number(self, key: str, default: float, lo: float = float("-inf"), hi: float = float("inf")) -> float:
        self._read.add(key)
        value = self._data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
            raise InvalidArgument(f"{self.prefix}.{key}", f"must be a number, got {value!r}")
        if not lo <= value <= hi:
            raise InvalidArgument(f"{self.prefix}.{key}", f"must be in [{lo}, {hi}], got {value}")
        return float(value)

    def text(self, key: str, default: str) -> str:
        self._read.add(key)
        value = self._data.get(key, default)
        if not isinstance(value, str) or not value:
            raise InvalidArgument(f"{self.prefix}.{key}", f"must be a non-empty string, got {value!r}")
        return value

    def mapping(self, key: str, default: Mapping[str, float]) -> dict[str, float]:
        self._read.add(key)
        value = self._data.get(key, default)
        if not isinstance(value, Mapping):
            raise InvalidArgument(f"{self.prefix}.{key}", "must be a table of numbers")
        out = {}
        for k, v in value.items():
            if isinstance(v, bool) or not isinstance(v, int | float) or v != v or v < 0:
                raise InvalidArgument(f"{self.prefix}.{key}.{k}", f"must be a non-negative number, got {v!r}")
            out[str(k)] = float(v)
        return out

    def check_unknown(self) -> None:
        unknown = sorted(set(self._data) - self._read)
        if unknown:
            raise InvalidArgument(f"{self.prefix}.{unknown[0]}", "unknown strategy parameter")


StrategyFactory = Callable[[str, Params, StrategyEnv], Strategy]
_KINDS: dict[str, StrategyFactory] = {}


def register(kind: str) -> Callable[[StrategyFactory], StrategyFactory]:
    """Registers a strategy kind by name (a decorator on its factory)."""
    def wrap(factory: StrategyFactory) -> StrategyFactory:
        _KINDS[kind] = factory
        return factory
    return wrap


def create(kind: str, name: str, params: Params, env: StrategyEnv) -> Strategy:
    _load_builtins()
    factory = _KINDS.get(kind)
    if factory is None:
        raise InvalidArgument(f"retrieval.strategies.{name}.kind",
                              f"unknown strategy kind {kind!r}; known: {', '.join(sorted(_KINDS))}")
    strategy = factory(name, params, env)
    params.check_unknown()
    return strategy


def is_builtin(kind: str) -> bool:
    """Whether ``kind`` is one of ltrr's own strategies, which a fresh process knows without a plug-in.

    >>> is_builtin("lexical"), is_builtin("my-plugin")
    (True, False)
    """
    _load_builtins()
    factory = _KINDS.get(kind)
    return factory is not None and getattr(factory, "__module__", "").startswith("ltrr_server.strategies.")


def _load_builtins() -> None:
    # Importing a strategy module registers it.
    from ltrr_server.strategies import explore, lexical, memory, vector, xmr  # noqa: F401
