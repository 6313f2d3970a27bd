"""Process-state hooks for ``fork()``."""

from __future__ import annotations

import os
import weakref
from typing import Callable


def in_forked_child(method: Callable[[], None]) -> None:
    """Call the bound ``method`` in every child this process forks from now on, for as long as
    its object lives: the hook holds the object weakly, so registering it keeps nothing
    alive. Where the platform cannot fork, nothing is registered."""
    if not hasattr(os, "register_at_fork"):
        return
    ref = weakref.WeakMethod(method)

    def hook() -> None:
        bound = ref()
        if bound is not None:
            bound()

    os.register_at_fork(after_in_child=hook)
