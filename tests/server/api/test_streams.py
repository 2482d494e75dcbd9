"""The overlapped stream: answers in order, reads ahead within its bound, ends with the read's error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from ltrr_server.api.streams import answered_in_order


class Requests:
    """An async request stream that counts what was read and can fail after ``fail_after`` reads."""

    def __init__(self, n: int, fail_after: int | None = None) -> None:
        self.n, self.fail_after, self.read = n, fail_after, 0

    def __aiter__(self) -> AsyncIterator[int]:
        return self._gen()

    async def _gen(self) -> AsyncIterator[int]:
        for i in range(self.n):
            if self.fail_after is not None and i == self.fail_after:
                raise ConnectionError("stream broke")
            self.read += 1
            yield i


async def square(i: int) -> int:
    await asyncio.sleep(0)
    return i * i


def test_answers_every_request_in_order() -> None:
    async def main() -> list[int]:
        return [a async for a in answered_in_order(Requests(100), square, bound=4)]

    assert asyncio.run(main()) == [i * i for i in range(100)]


@pytest.mark.parametrize("bound", [1, 3, 16])
def test_reads_ahead_of_the_writer_but_no_further_than_the_bound(bound: int) -> None:
    requests = Requests(1000)

    async def main() -> int:
        stream = answered_in_order(requests, square, bound)
        assert await stream.__anext__() == 0
        for _ in range(20):  # the writer is stuck (a client that does not read): let the reader run
            await asyncio.sleep(0)
        read = requests.read
        await stream.aclose()
        return read

    read = asyncio.run(main())
    # One yielded, `bound` queued, one answered and waiting for room: the rest stays unread.
    assert 1 < read <= bound + 2


def test_a_broken_read_ends_the_stream_after_the_answers_before_it() -> None:
    got: list[int] = []

    async def main() -> None:
        async for a in answered_in_order(Requests(10, fail_after=5), square, bound=2):
            got.append(a)

    with pytest.raises(ConnectionError, match="stream broke"):
        asyncio.run(main())
    assert got == [0, 1, 4, 9, 16]


def test_closing_the_stream_early_stops_the_reader() -> None:
    async def main() -> list[asyncio.Task[object]]:
        stream = answered_in_order(Requests(1000), square, bound=2)
        await stream.__anext__()
        await stream.aclose()
        await asyncio.sleep(0)
        return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

    assert asyncio.run(main()) == []
