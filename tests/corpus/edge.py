"""Sample code: the corners — finally with return/continue, except*, nested defs, deep unwinding."""

from __future__ import annotations

import asyncio
from typing import Iterator


def return_in_finally(flag: bool) -> str:
    """A finally block whose return overrides the try's outcome."""
    try:
        if flag:
            raise ValueError("lost")
        return "try"
    finally:
        if flag:
            return "finally"  # noqa: B012


def continue_in_finally(items: list[int]) -> int:
    """``continue`` and ``break`` inside finally blocks of a loop."""
    total = 0
    for item in items:
        try:
            if item < 0:
                raise ValueError(item)
            total += item
        except ValueError:
            total -= 1
        finally:
            if item == 0:
                continue  # noqa: B012
            if item > 100:
                break  # noqa: B012
        total *= 2
    return total


def except_group(kinds: list[str]) -> list[str]:
    """``except*`` splitting an exception group."""
    seen = []
    errors: list[Exception] = []
    for kind in kinds:
        if kind == "value":
            errors.append(ValueError(kind))
        elif kind == "type":
            errors.append(TypeError(kind))
    try:
        if errors:
            raise ExceptionGroup("many", errors)
        seen.append("none")
    except* ValueError:
        seen.append("value")
    except* TypeError:
        seen.append("type")
    return seen


def _level3(n: int) -> int:
    if n > 2:
        raise KeyError(n)
    return n


def _level2(n: int) -> int:
    value = _level3(n)
    return value + 1


def deep_unwind(n: int) -> int:
    """An exception raised three frames down, caught here."""
    try:
        return _level2(n)
    except KeyError:
        return -1


def defines_things(n: int) -> object:
    """Defines a function, a class and a lambda with defaults during the call."""

    def inner(x: int, scale: int = n) -> int:
        return x * scale

    class Local:
        """A class defined at call time."""

        factor = n

        def twice(self) -> int:
            return self.factor * 2

    pick = lambda a=n: a if a % 2 else -a  # noqa: E731
    return inner(2), Local().twice(), pick()


def generator_cleanup(stop_at: int) -> list[int]:
    """A generator with try/finally, closed early by breaking out of the loop."""
    out = []

    def gen() -> Iterator[int]:
        try:
            for i in range(5):  # noqa: UP028 - a loop around the yield on purpose
                yield i
        finally:
            out.append(-1)

    for value in gen():
        if value == stop_at:
            break
        out.append(value)
    return out


def generator_raises(fail_at: int) -> list[int]:
    """A generator that raises while being consumed."""

    def gen() -> Iterator[int]:
        for i in range(4):
            if i == fail_at:
                raise RuntimeError(i)
            yield i

    got = []
    try:
        for value in gen():
            got.append(value)
    except RuntimeError:
        got.append(99)
    return got


def recursion_with_errors(n: int) -> int:
    """Recursion where the deepest call raises and an intermediate frame handles it."""
    if n == 0:
        raise ArithmeticError("bottom")
    try:
        return recursion_with_errors(n - 1) + 1
    except ArithmeticError:
        if n % 2:
            raise
        return 0


async def async_edges(n: int) -> list[object]:
    """Awaits in comprehensions and conditions, async with raising, async for with break."""
    results: list[object] = [await _echo(i) for i in range(n) if await _echo(i % 2)]

    class Ctx:
        async def __aenter__(self) -> Ctx:
            return self

        async def __aexit__(self, *exc: object) -> bool:
            await asyncio.sleep(0)
            return False

    try:
        async with Ctx():
            if n > 2:
                raise LookupError("in async with")
            results.append("inside")
    except LookupError:
        results.append("caught")

    async def agen() -> object:
        for i in range(10):
            yield i

    async for value in agen():  # type: ignore[attr-defined]
        if value > n:
            break
        results.append(value)
    return results


async def _echo(value: int) -> int:
    await asyncio.sleep(0)
    return value


def while_complex(a: int, b: int) -> int:
    """A while loop with a compound condition and an else clause."""
    steps = 0
    while a > 0 and (b > 0 or a % 2 == 0):
        a -= 1
        b -= 2
        steps += 1
    else:
        steps += 100
    return steps


def one_liners(x: int) -> int:
    """Compound statements on one line."""
    # fmt: off
    if x > 0: x += 1  # noqa: E701
    for _ in range(2): x *= 2  # noqa: E701
    while x > 100: x //= 3  # noqa: E701
    # fmt: on
    return x
