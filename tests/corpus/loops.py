"""Sample code: while/for loops with break, continue and else, and nested loops."""

from __future__ import annotations


def for_else(items: list[int], target: int) -> int:
    """A search loop whose else clause runs when nothing breaks."""
    index = -1
    for position, item in enumerate(items):
        if item == target:
            index = position
            break
    else:
        index = -2
    return index


def while_else(n: int) -> int:
    """A counting while loop with break, continue and else."""
    i = 0
    total = 0
    while i < n:
        i += 1
        if i % 3 == 0:
            continue
        if i > 7:
            break
        total += i
    else:
        total = -total
    return total


def nested(rows: int, cols: int) -> list[tuple[int, int]]:
    """Nested for loops with inner break and outer continue."""
    found = []
    for r in range(rows):
        if r == 1:
            continue
        for c in range(cols):
            if c > r:
                break
            found.append((r, c))
    return found


def while_true(limit: int) -> int:
    """An infinite loop left only by break."""
    count = 0
    while True:
        count += 1
        if count >= limit:
            break
    return count


def empty_loops(items: list[int]) -> int:
    """Loops that may not iterate at all."""
    total = 0
    for item in items:
        total += item
    while total < 0:
        total += 10
    return total


def loop_with_try(items: list[object]) -> int:
    """A loop whose body handles exceptions and continues or breaks from the handler."""
    total = 0
    for item in items:
        try:
            total += int(item)  # type: ignore[call-overload]
        except ValueError:
            continue
        except TypeError:
            break
    return total
