"""Sample code: coroutines, gather, nested awaits, async generators, async for/with."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator


async def leaf(x: int) -> int:
    """Awaits a zero sleep and branches on its input."""
    await asyncio.sleep(0)
    if x % 2:
        return x * 3
    return x // 2


async def middle(x: int) -> int:
    """Awaits ``leaf`` twice, with a branch between the awaits."""
    a = await leaf(x)
    if a > 5:
        a = await leaf(a)
    else:
        await asyncio.sleep(0)
    return a


async def fan_out(values: list[int]) -> list[int]:
    """Runs several coroutines concurrently with gather."""
    results = await asyncio.gather(*(middle(v) for v in values))
    return [r for r in results if r >= 0]


async def ticker(n: int) -> AsyncIterator[int]:
    """An async generator with awaits between yields."""
    for i in range(n):
        await asyncio.sleep(0)
        if i == 3:
            continue
        yield i


class AsyncResource:
    """An async context manager that suppresses KeyError."""

    def __init__(self) -> None:
        self.open = False

    async def __aenter__(self) -> AsyncResource:
        await asyncio.sleep(0)
        self.open = True
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> bool:
        await asyncio.sleep(0)
        self.open = False
        return exc_type is KeyError


async def consume(n: int, fail: bool) -> int:
    """async with + async for, optionally raising inside the with block."""
    total = 0
    async with AsyncResource() as res:
        async for value in ticker(n):
            total += value
            if fail and value == 1:
                raise KeyError("suppressed")
        total += int(res.open)
    return total


async def comprehension(n: int) -> list[int]:
    """An async comprehension with a condition."""
    return [v async for v in ticker(n) if v % 2 == 0]


async def failing(x: int) -> int:
    """An awaited coroutine that may raise, caught by the caller."""
    try:
        await asyncio.sleep(0)
        if x < 0:
            raise ValueError("negative")
        return x
    except ValueError:
        await asyncio.sleep(0)
        return 0


async def abandon_async_gen(n: int) -> int:
    """Takes one item from an async generator, then closes it."""
    agen = ticker(n)
    try:
        first = await agen.__anext__()
    except StopAsyncIteration:
        first = -1
    await agen.aclose()
    return first


async def tasks_and_wait(values: list[int]) -> int:
    """Creates tasks explicitly and awaits them in order."""
    tasks = [asyncio.ensure_future(failing(v)) for v in values]
    total = 0
    for task in tasks:
        total += await task
    return total


async def consume_together(n: int) -> list[int]:
    """Two tasks, each an ``async for`` over an async generator that awaits between its
    yields: each task's steps run between the other's, and each loop ends the normal way."""
    return list(await asyncio.gather(consume(n, False), consume(n + 2, False)))
