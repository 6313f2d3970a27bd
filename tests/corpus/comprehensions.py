"""Sample code: list/set/dict/generator comprehensions, nested and filtered, and lambdas."""

# fmt: off

from __future__ import annotations

from typing import Callable


def list_comp(n: int) -> list[int]:
    """A filtered list comprehension."""
    return [i * i for i in range(n) if i % 2 == 0]


def set_and_dict(words: list[str]) -> tuple[set[int], dict[str, int]]:
    """Set and dict comprehensions, one with a conditional expression."""
    lengths = {len(w) for w in words}
    index = {w: (len(w) if w else -1) for w in words if not w.startswith("_")}
    return lengths, index


def nested_comp(n: int) -> list[tuple[int, int]]:
    """A nested comprehension with conditions on both levels."""
    return [
        (i, j)
        for i in range(n)
        if i != 2
        for j in range(i)
        if (i + j) % 2
    ]


def generator_expr(n: int) -> int:
    """A generator expression consumed by sum and one abandoned by any()."""
    total = sum(x for x in range(n) if x > 2)
    found = any(x > 1 for x in range(n))
    return total + int(found)


def matrix(n: int) -> list[list[int]]:
    """A comprehension inside a comprehension."""
    return [[r * c for c in range(n)] for r in range(n)]


def lambdas(values: list[int]) -> list[int]:
    """Lambdas as sort keys, in a map and called directly."""
    key: Callable[[int], int] = lambda v: -v if v % 2 else v  # noqa: E731
    ordered = sorted(values, key=key)
    doubled = list(map(lambda v: v * 2, ordered))
    pick = (lambda a, b: a if a > b else b)(len(doubled), 3)
    return doubled[:pick]


def multi_line_lambda(flag: bool) -> int:
    """A lambda whose body spans lines."""
    fn = lambda x: (  # noqa: E731
        x + 1
        if flag
        else x - 1
    )
    return fn(10)
