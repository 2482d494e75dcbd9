"""Bidirectional streams whose reading and answering overlap.

A handler written as ``async for request in stream: yield answer(request)`` asks gRPC for the
next message only after the previous answer was written: every message waits for two trips
through gRPC's completion queue (read, then write), one after the other. Here a task reads and
answers while the caller writes, so reads and writes are in flight together. The answers keep
the order of their requests, and at most ``bound`` of them wait to be written: past that the
task stops reading, and HTTP/2 flow control pushes back on the sender instead of memory growing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

Q = TypeVar("Q")
R = TypeVar("R")


async def answered_in_order(
    requests: AsyncIterator[Q], answer: Callable[[Q], Awaitable[R]], bound: int
) -> AsyncIterator[R]:
    """Yields ``await answer(request)`` for each request, in order, reading ahead of the writes.

    A failure to read (or in ``answer``) ends the stream with that error once the answers made
    before it are yielded.

    >>> async def numbers():
    ...     for i in range(3):
    ...         yield i
    >>> async def double(i):
    ...     return 2 * i
    >>> async def main():
    ...     return [a async for a in answered_in_order(numbers(), double, bound=1)]
    >>> asyncio.run(main())
    [0, 2, 4]
    """
    answers: asyncio.Queue[R | _End] = asyncio.Queue(bound)

    async def read() -> None:
        try:
            async for request in requests:
                await answers.put(await answer(request))
        except Exception:
            await answers.put(_END)  # wakes the writer, which re-raises this when it awaits the task
            raise
        await answers.put(_END)

    reader = asyncio.ensure_future(read())
    try:
        while (item := await answers.get()) is not _END:
            yield item  # type: ignore[misc]  # not _END, so an R
        await reader
    finally:
        # The call ended early (cancelled, or the writer failed): stop reading. Not awaited, so a
        # reader blocked on a full queue cannot hold the call open.
        reader.cancel()


class _End:
    """Marks the end of the answers."""


_END = _End()
