"""Sample code: try/except/else/finally in all outcomes, and with-statements."""

from __future__ import annotations

import contextlib
from typing import Iterator


class Resource:
    """A context manager that may suppress the exception leaving its block."""

    def __init__(self, suppress: bool) -> None:
        self.suppress = suppress
        self.entered = False

    def __enter__(self) -> Resource:
        self.entered = True
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> bool:
        if exc_type is None:
            return False
        return self.suppress


def caught(kind: str) -> str:
    """try/except/else/finally where the exception (if any) is caught."""
    log = []
    try:
        if kind == "value":
            raise ValueError(kind)
        if kind == "key":
            raise KeyError(kind)
        log.append("body")
    except ValueError:
        log.append("value")
    except KeyError as exc:
        log.append("key:" + str(exc))
    else:
        log.append("else")
    finally:
        log.append("finally")
    return ",".join(log)


def uncaught(flag: bool) -> int:
    """An exception that leaves the function after finally runs."""
    try:
        if flag:
            raise RuntimeError("boom")
        value = 1
    finally:
        value = 2
    return value


def reraised(flag: bool) -> int:
    """An exception caught, handled, then re-raised."""
    try:
        if flag:
            raise LookupError("missing")
    except LookupError:
        note = "seen"
        assert note
        raise
    return len("ok")


def raised_in_finally(flag: bool) -> int:
    """An exception raised from inside a finally block."""
    try:
        result = 10
    finally:
        if flag:
            raise OSError("from finally")
    return result


def chained(value: str) -> int:
    """Converting one exception into another with ``raise ... from``."""
    try:
        return int(value)
    except ValueError as exc:
        raise TypeError("not a number") from exc


def nested_try(a: int) -> str:
    """A try inside an except handler inside a try."""
    try:
        try:
            return str(10 // a)
        except ZeroDivisionError:
            try:
                raise ValueError("zero")
            except ValueError:
                return "zero"
    finally:
        a += 1


def call_raiser(flag: bool) -> str:
    """Calls a function that raises, and catches it one level up."""
    try:
        _raise_if(flag)
    except ArithmeticError:
        return "caught"
    return "clean"


def _raise_if(flag: bool) -> None:
    if flag:
        raise ArithmeticError("deep")


def with_statement(suppress: bool, fail: bool) -> str:
    """A with-block that raises or not, with the exception suppressed or not."""
    state = "start"
    with Resource(suppress) as res:
        state = "inside"
        if fail:
            raise ValueError("in with")
        state = "done"
    return state + str(res.entered)


@contextlib.contextmanager
def managed(tag: str) -> Iterator[str]:
    """A generator-based context manager that swallows ValueError."""
    try:
        yield tag.upper()
    except ValueError:
        pass
    finally:
        tag = ""


def with_generator_cm(fail: bool) -> str:
    """Uses a contextlib context manager, with and without an exception."""
    out = "x"
    with managed("ab") as value:
        out = value
        if fail:
            raise ValueError("suppressed by the manager")
        out += "!"
    return out


def multiple_with(fail: bool) -> str:
    """Two context managers in one with-statement."""
    with Resource(True) as a, Resource(False) as b:
        if fail:
            raise KeyError("suppressed by the outer manager")
        result = str(a.entered and b.entered)
    return result if not fail else "suppressed"


def except_tuple(n: int) -> int:
    """An exception caught by a tuple of types."""
    try:
        if n == 1:
            raise IndexError("i")
        if n == 2:
            raise KeyError("k")
    except (IndexError, KeyError):
        n = -n
    return n
