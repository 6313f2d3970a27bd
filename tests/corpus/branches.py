"""Sample code: if/elif/else, ternaries, short-circuits, walrus, assert, multi-line statements."""

# fmt: off

from __future__ import annotations


def classify(n: int) -> str:
    """Sign and size of ``n`` through an if/elif/else chain."""
    if n < 0:
        kind = "negative"
    elif n == 0:
        kind = "zero"
    elif n < 10:
        kind = "small"
    else:
        kind = "large"
    return kind


def nested_if(a: int, b: int) -> int:
    """Nested conditions without else on the inner level."""
    result = 0
    if a > 0:
        if b > 0:
            result = 1
        result += 10
    else:
        if b > 0:
            result = -1
    return result


def ternary(x: int) -> str:
    """A conditional expression and a multi-line one."""
    parity = "even" if x % 2 == 0 else "odd"
    size = (
        "big"
        if x > 100
        else "little"
    )
    return parity + "/" + size


def short_circuit(a: object, b: object, c: object) -> tuple[object, object, bool]:
    """``and``/``or`` chains whose right operands may never run."""
    first = a and b
    second = a or c
    both = bool(a) and bool(b) and bool(c)
    if a and (b or c):
        both = not both
    return first, second, both


def walrus(items: list[int]) -> int:
    """Assignment expressions in conditions and loops."""
    total = 0
    if (n := len(items)) > 3:
        total += n
    data = list(items)
    while (item := data.pop() if data else None) is not None:
        if item < 0:
            continue
        total += item
    return total


def checked(x: int) -> int:
    """An assert that may fail."""
    assert x >= 0, "negative"
    return x * 2


def multi_line(a: int, b: int) -> int:
    """Statements spanning several physical lines."""
    value = (
        a
        + b
        * 2
    )
    if (
        value > 10
        and a > 0
    ):
        value = value - (
            1
        )
    items = [
        a,
        b,
    ]
    return value + sum(
        items,
    )


def early_return(values: list[int]) -> int:
    """Several return statements, one at the top of a loop."""
    if not values:
        return -1
    for v in values:
        if v == 42:
            return v
    return 0


def pass_and_docstring_only(flag: bool) -> None:
    """A branch whose body is only ``pass``."""
    if flag:
        pass
    else:
        pass
