"""Sample code: match statements with literal, class, sequence and mapping patterns."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Point:
    """A point for class patterns."""

    x: int
    y: int


def match_literal(command: str) -> str:
    """Literal and alternative patterns with a wildcard."""
    match command:
        case "start":
            return "starting"
        case "stop" | "halt":
            return "stopping"
        case _:
            return "unknown"


def match_class(obj: object) -> str:
    """Class patterns with positional and keyword sub-patterns and a guard."""
    match obj:
        case Point(x=0, y=0):
            return "origin"
        case Point(x=0, y=y):
            return f"y-axis {y}"
        case Point(x=x, y=y) if x == y:
            return "diagonal"
        case Point():
            return "point"
        case int(n) if n > 100:
            return "big int"
        case int():
            return "int"
    return "other"


def match_sequence(seq: object) -> str:
    """Sequence patterns with star captures."""
    match seq:
        case []:
            return "empty"
        case [x]:
            return f"one {x}"
        case [x, y] if x > y:
            return "descending pair"
        case [x, y]:
            return "pair"
        case [first, *rest]:
            return f"{first} and {len(rest)} more"
        case _:
            return "not a list"


def match_mapping(event: dict[str, object]) -> str:
    """Mapping patterns with rest capture and nested value patterns."""
    match event:
        case {"type": "click", "pos": (x, y)}:
            return f"click {x},{y}"
        case {"type": "key", "key": str(k)} if len(k) == 1:
            return "char"
        case {"type": "key", **rest}:
            return f"key with {sorted(rest)}"
        case {}:
            return "other event"
    return "unreachable"


def match_no_wildcard(value: int) -> int:
    """A match without a catch-all, so no case may apply."""
    result = 0
    match value:
        case 1:
            result = 10
        case 2:
            result = 20
    return result
