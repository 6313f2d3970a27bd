"""Sample code: exceptions thrown into suspended generators and coroutines (``throw()``, task
cancellation): no ``RESUME`` runs, the frame continues in a handler or ends at the yield."""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncGenerator, Generator

#: Seconds a task stays suspended before it is cancelled: longer than the sys.monitoring core's
#: linger (0.05 s), so the code is disarmed between the task's steps and the cancellation
#: resumes it (with ``throw()``, no ``RESUME``) in code that carries only the watch.
PAUSE = 0.15


def guarded(n: int) -> Generator[int, None, int]:
    """A generator whose yield sits in try/except inside try/finally."""
    total = 0
    try:
        for i in range(n):
            try:
                yield i
            except KeyError:
                total += 100
        total += 1
    finally:
        total += 1000
    return total


def throw_into_handler(mode: str) -> object:
    """Throws into ``guarded`` suspended at its yield: caught by its ``except`` (the loop goes
    on), or through its ``finally`` only."""
    gen = guarded(2)
    next(gen)
    if mode == "caught":
        after = gen.throw(KeyError("k"))
        try:
            next(gen)
        except StopIteration as stop:
            return (after, stop.value)
        return "unreachable"
    try:
        gen.throw(ValueError("v"))
    except ValueError:
        return "propagated"
    return "unreachable"


def throw_right_after_yield() -> object:
    """Throws into ``guarded`` with no new line of the caller between its ``yield`` and the
    ``throw()`` (both on one line)."""
    gen = guarded(2)
    after = gen.throw(KeyError("k")) if next(gen) == 0 else None
    return (after, list(gen))


def plain(n: int) -> Generator[int, None, None]:
    """A generator with no handler at all."""
    yield n
    yield n + 1


def throw_out(n: int) -> object:
    """An exception thrown in at a yield ends the generator there (it propagates)."""
    gen = plain(n)
    first = next(gen)
    try:
        gen.throw(LookupError("end"))
    except LookupError:
        return first
    return "unreachable"


def cleaned(n: int) -> Generator[int, None, None]:
    """A generator with only a ``finally`` around its yield."""
    try:
        yield n
    finally:
        n = 0


def throw_through_finally(n: int) -> object:
    """An exception thrown in runs the ``finally`` and ends the generator; a second generator
    is closed explicitly (``GeneratorExit`` thrown in the same way)."""
    gen = cleaned(n)
    next(gen)
    try:
        gen.throw(ArithmeticError("end"))
    except ArithmeticError:
        pass
    other = cleaned(n)
    next(other)
    other.close()
    return n


def delegating() -> Generator[int, None, None]:
    """Delegates to ``plain`` with ``yield from``, with no handler of its own."""
    yield from plain(0)


def throw_through_delegation() -> object:
    """An exception thrown in at a ``yield from`` goes to the sub-generator first, and ends
    both (the delegating frame leaves from past its loop, not from a yield)."""
    gen = delegating()
    next(gen)
    try:
        gen.throw(KeyError("k"))
    except KeyError:
        return "ended"
    return "unreachable"


async def agen(n: int) -> AsyncGenerator[int, None]:
    """An async generator with no handler."""
    yield n
    yield n + 1


async def athrow_out(n: int) -> object:
    """``athrow()`` at an async generator's yield ends it there."""
    gen = agen(n)
    first = await gen.__anext__()
    try:
        await gen.athrow(KeyError("k"))
    except KeyError:
        return first
    return "unreachable"


async def waiter(started: asyncio.Event, gate: asyncio.Event, log: list[str]) -> str:
    """Waits on ``gate``; a cancellation lands in its handlers."""
    try:
        started.set()
        await gate.wait()
        log.append("woke")
        return "done"
    except asyncio.CancelledError:
        log.append("cancelled")
        raise
    finally:
        log.append("finally")


async def cancel_waiter(cancel: bool) -> list[str]:
    """Runs ``waiter`` as a task, cancels it (or lets it finish) while it waits."""
    started, gate = asyncio.Event(), asyncio.Event()
    log: list[str] = []
    task = asyncio.ensure_future(waiter(started, gate, log))
    await started.wait()
    await asyncio.sleep(PAUSE)
    if cancel:
        task.cancel()
    else:
        gate.set()
    try:
        log.append(await task)
    except asyncio.CancelledError:
        log.append("seen")
    return log


async def swallowing(started: asyncio.Event) -> int:
    """A coroutine that handles its own cancellation and returns normally."""
    started.set()
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        value = 1
    else:
        value = 2
    return value


async def cancel_swallowed() -> int:
    """Cancels a task that catches the cancellation and returns a value."""
    started = asyncio.Event()
    task = asyncio.ensure_future(swallowing(started))
    await started.wait()
    await asyncio.sleep(PAUSE)
    task.cancel()
    return await task


async def sleeper(started: asyncio.Event) -> None:
    """A coroutine with no handler: a cancellation ends it at its ``await``."""
    started.set()
    await asyncio.sleep(3600)


async def cancel_sleeper() -> str:
    """Cancels a task that does not handle the cancellation."""
    started = asyncio.Event()
    task = asyncio.ensure_future(sleeper(started))
    await started.wait()
    await asyncio.sleep(PAUSE)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        return "cancelled"
    return "unreachable"


def relaying(log: list[str]) -> Generator[int, None, None]:
    """Delegates to ``plain`` inside try/finally: a ``close()`` at the ``yield from`` closes
    ``plain`` first, then enters this frame at its yield."""
    try:
        yield from plain(0)
    finally:
        log.append("finally")


def reraising(log: list[str]) -> Generator[int, None, None]:
    """A handler that notes the exception and re-raises it into an outer ``finally``."""
    try:
        try:
            yield len(log)
        except KeyError:
            log.append("caught")
            raise
    finally:
        log.append("finally")


def looping(log: list[str]) -> Generator[int, None, None]:
    """Catches what is thrown in at its yield, each time."""
    while True:
        try:
            yield len(log)
        except KeyError:
            log.append("caught")


def guarding(log: list[str]) -> Generator[int, None, None]:
    """Its yield inside a ``with`` statement that suppresses a KeyError."""
    log.append("guard")
    with contextlib.suppress(KeyError):
        yield len(log)
    log.append("after")


def throw_in_turn() -> list[str]:
    """Closes ``relaying`` at its ``yield from``, throws into ``reraising`` once, into
    ``looping`` three times (the same handlers, one throw after another) and into
    ``guarding`` (its ``with`` statement's exit)."""
    log: list[str] = []
    gen = relaying(log)
    next(gen)
    gen.close()
    other = reraising(log)
    next(other)
    try:
        other.throw(KeyError("k"))
    except KeyError:
        log.append("out")
    loop = looping(log)
    next(loop)
    for _ in range(3):
        loop.throw(KeyError("again"))
    loop.close()
    guard = guarding(log)
    next(guard)
    try:
        guard.throw(KeyError("suppressed"))
    except StopIteration:
        log.append("done")
    return log
