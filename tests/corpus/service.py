"""Sample code: a small request handler (sync and async) whose path depends on the request."""

from __future__ import annotations

import asyncio

from . import branches, generators, loops, matching


def parse(raw: str) -> dict[str, object]:
    """Parses ``key=value;key=value`` into a dict, converting digits to ints."""
    fields: dict[str, object] = {}
    for part in raw.split(";"):
        if not part:
            continue
        key, _, value = part.partition("=")
        fields[key] = int(value) if value.isdigit() else value
    return fields


def validate(fields: dict[str, object]) -> list[str]:
    """Returns the problems found in a parsed request."""
    problems = []
    if "kind" not in fields:
        problems.append("kind missing")
    qty = fields.get("qty", 0)
    if not isinstance(qty, int):
        problems.append("qty not a number")
    elif qty > 50:
        problems.append("qty too large")
    return problems


def handle_sync(raw: str) -> str:
    """A synchronous request: parse, validate, then branch on the kind."""
    fields = parse(raw)
    problems = validate(fields)
    if problems:
        return "400 " + ",".join(problems)
    qty = fields.get("qty", 0)
    assert isinstance(qty, int)
    kind = fields["kind"]
    if kind == "sum":
        body = str(sum(generators.countdown(qty)))
    elif kind == "search":
        body = str(loops.for_else(list(range(qty)), 7))
    elif kind == "shape":
        body = matching.match_sequence(list(range(qty)))
    else:
        body = branches.classify(qty)
    return "200 " + body


async def handle_async(raw: str) -> str:
    """An asynchronous request: awaits between steps so concurrent requests interleave."""
    fields = parse(raw)
    await asyncio.sleep(0)
    problems = validate(fields)
    if problems:
        await asyncio.sleep(0)
        return "400 " + ",".join(problems)
    qty = fields.get("qty", 0)
    assert isinstance(qty, int)
    total = 0
    for step in range(qty % 4 + 1):
        await asyncio.sleep(0)
        if step % 2:
            total += await _slow_double(step)
        else:
            total -= step
    if fields["kind"] == "sync":
        return handle_sync(raw.replace("kind=sync", "kind=search"))
    return "200 " + str(total)


async def _slow_double(value: int) -> int:
    await asyncio.sleep(0)
    return value * 2
