"""Sample code: generators with yield, yield from, send/throw/close and early abandonment."""

from __future__ import annotations

from typing import Generator, Iterator


def countdown(n: int) -> Iterator[int]:
    """A plain generator with a loop and a final statement."""
    while n > 0:
        yield n
        n -= 1
    done = True
    assert done


def evens_then_odds(n: int) -> Iterator[int]:
    """Delegates to two generators with ``yield from``."""
    yield from (i for i in range(n) if i % 2 == 0)
    yield from countdown(n)
    return


def accumulator() -> Generator[int, int | None, str]:
    """A coroutine-style generator driven by send/throw/close."""
    total = 0
    try:
        while True:
            try:
                value = yield total
            except ValueError:
                total = -1
                continue
            if value is None:
                break
            total += value
    except GeneratorExit:
        total = 0
        raise
    finally:
        total += 1000
    return "total=" + str(total)


def consume_all(n: int) -> list[int]:
    """Runs generators to exhaustion."""
    return list(countdown(n)) + list(evens_then_odds(n))


def abandon_early(n: int) -> int:
    """Takes only the first item and drops the generator."""
    gen = countdown(n)
    first = next(gen, -1)
    del gen
    return first


def drive_accumulator(mode: str) -> object:
    """Drives ``accumulator`` with send, throw, close or a clean stop."""
    gen = accumulator()
    next(gen)
    gen.send(5)
    gen.send(7)
    if mode == "throw":
        return gen.throw(ValueError("reset"))
    if mode == "close":
        gen.close()
        return "closed"
    try:
        gen.send(None)
    except StopIteration as stop:
        return stop.value
    return "unreachable"


def delegating(values: list[int]) -> Generator[int, int | None, int]:
    """Delegates send() through ``yield from`` and uses the sub-generator's result."""
    result = yield from _summer(values)
    yield result
    return result * 2


def _summer(values: list[int]) -> Generator[int, int | None, int]:
    total = 0
    for v in values:
        extra = yield v
        if extra:
            total += extra
        total += v
    return total


def drive_delegating(values: list[int]) -> list[int]:
    """Sends values into a delegating generator and collects what it yields."""
    gen = delegating(values)
    out = []
    try:
        out.append(next(gen))
        while True:
            out.append(gen.send(1))
    except StopIteration as stop:
        out.append(stop.value)
    return out


def generator_with_return_in_loop(limit: int) -> list[int]:
    """A generator that returns from inside a loop."""

    def gen() -> Iterator[int]:
        for i in range(10):
            if i >= limit:
                return
            yield i

    return list(gen())
