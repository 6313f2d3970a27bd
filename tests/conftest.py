"""Suite-wide fixtures: no runcov scope or tracer may leak from one test into the next."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from runcov.tracing._scope import _current


@pytest.fixture(autouse=True)
def _no_leaked_scope() -> Iterator[None]:
    tracer_before = sys.gettrace()
    yield
    leaked = _current.get()
    _current.set(None)
    assert leaked is None, f"a runcov scope leaked out of the test: {leaked!r}"
    assert sys.gettrace() is tracer_before, "the test left a different tracer installed"
