"""Sample code: decorators, classes, properties, dunder methods, recursion and closures."""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def traced(fn: F) -> F:
    """A decorator without arguments."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = fn(*args, **kwargs)
        if result is None:
            return "none"
        return result

    return wrapper  # type: ignore[return-value]


def repeat(times: int) -> Callable[[F], F]:
    """A decorator with arguments."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            results = []
            for _ in range(times):
                results.append(fn(*args, **kwargs))
            return results

        return wrapper  # type: ignore[return-value]

    return decorate


@traced
def maybe(x: int) -> int | None:
    """Decorated function returning None for odd inputs."""
    if x % 2:
        return None
    return x


@repeat(times=3)
def greet(name: str) -> str:
    """Decorated function called three times per call."""
    return "hi " + name


class Vector:
    """A small class with __init__, properties and dunder methods."""

    def __init__(self, x: float, y: float) -> None:
        self.x = x
        self.y = y

    @property
    def norm2(self) -> float:
        """Squared length."""
        return self.x * self.x + self.y * self.y

    @property
    def label(self) -> str:
        """Settable label, derived when unset."""
        return getattr(self, "_label", "v")

    @label.setter
    def label(self, value: str) -> None:
        if not value:
            raise ValueError("empty label")
        self._label = value

    def __add__(self, other: Vector) -> Vector:
        return Vector(self.x + other.x, self.y + other.y)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vector):
            return NotImplemented
        return (self.x, self.y) == (other.x, other.y)

    def __hash__(self) -> int:
        return hash((self.x, self.y))

    def __repr__(self) -> str:
        return f"Vector({self.x}, {self.y})"

    def __len__(self) -> int:
        return 2

    def __iter__(self):  # type: ignore[no-untyped-def]
        yield self.x
        yield self.y

    @classmethod
    def zero(cls) -> Vector:
        """The origin."""
        return cls(0, 0)

    @staticmethod
    def dot(a: Vector, b: Vector) -> float:
        """Dot product."""
        return sum(p * q for p, q in zip(a, b, strict=True))


def use_vectors(x: float, label: str) -> tuple[object, ...]:
    """Exercises Vector's methods; an empty label takes the error path."""
    a = Vector(x, 1)
    b = Vector.zero() + a
    same = a == b
    other = a == "not a vector"
    try:
        a.label = label
    except ValueError:
        label = "rejected"
    return (
        a.norm2,
        a.label,
        label,
        same,
        other,
        repr(b),
        len(a),
        Vector.dot(a, b),
        hash(a) == hash(b),
    )


def factorial(n: int) -> int:
    """Recursion with a base case."""
    if n <= 1:
        return 1
    return n * factorial(n - 1)


def fib_tree(n: int) -> int:
    """Double recursion."""
    return n if n < 2 else fib_tree(n - 1) + fib_tree(n - 2)


def make_counter(start: int) -> Callable[[int], int]:
    """A closure over a nonlocal counter."""
    count = start

    def bump(step: int) -> int:
        nonlocal count
        if step < 0:
            count = start
        else:
            count += step
        return count

    return bump


def use_closures(steps: list[int]) -> list[int]:
    """Builds a counter and drives it."""
    bump = make_counter(10)
    return [bump(s) for s in steps]


def decorated_calls(x: int) -> tuple[object, object]:
    """Calls both decorated functions."""
    return maybe(x), greet("ann" if x else "bob")


class Base:
    """A base class whose method is overridden and called through super()."""

    def describe(self, verbose: bool) -> str:
        """Basic description."""
        if verbose:
            return "base(verbose)"
        return "base"


class Child(Base):
    """Overrides describe and calls the base version."""

    def describe(self, verbose: bool) -> str:
        """Extended description."""
        text = super().describe(verbose)
        return "child+" + text


def inheritance(verbose: bool) -> str:
    """Uses Child.describe."""
    return Child().describe(verbose)


def decorate_at_runtime(times: int) -> object:
    """Applies both decorators during the call (not only at import)."""

    @traced
    @repeat(times)
    def local(v: int) -> int | None:
        return v if v > 1 else None

    return local(times)
