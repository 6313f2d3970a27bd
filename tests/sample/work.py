"""Small functions measured by the tracing-core tests."""

import asyncio


def classify(n):
    if n < 0:
        return "negative"
    elif n == 0:
        return "zero"
    return "positive"


def blocking(n):
    total = 0
    for i in range(n):
        total += i
    return total


async def handler(n, delay=0):
    await asyncio.sleep(delay)
    kind = classify(n)
    await asyncio.sleep(delay)
    if kind == "positive":
        return await asyncio.to_thread(blocking, n)
    return 0


def measures_from_inside(capture):
    before = 1
    with capture as cov:
        after = before + 1  # this frame was running when the scope opened: not measured
        classify(after)
    return cov


def replaces_tracer(tracer, n):
    import sys

    sys.settrace(tracer)
    total = 0
    for i in range(n):
        total += i - i + 1
    return total


def squares(n):
    for i in range(n):
        yield i * i
