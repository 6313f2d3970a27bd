"""The table of corpus cases: which entry function to call, with which inputs."""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

from .matching import Point

Args = tuple[Any, ...]


@dataclass(frozen=True)
class Case:
    """One measured run: ``module.func(*args)`` for every ``args`` in ``inputs``, in order."""

    module: str
    func: str
    inputs: tuple[Args, ...]
    label: str

    @property
    def id(self) -> str:
        """Readable pytest id, e.g. ``branches.classify[all-branches]``."""
        return f"{self.module}.{self.func}[{self.label}]"

    def load(self) -> Callable[..., Any]:
        """The entry function (the corpus module is imported here, outside any measurement)."""
        mod: ModuleType = importlib.import_module(f"{__package__}.{self.module}")
        return getattr(mod, self.func)

    @property
    def is_async(self) -> bool:
        """True when the entry function is a coroutine function."""
        return inspect.iscoroutinefunction(self.load())


def _c(module: str, func: str, label: str, *inputs: Args) -> Case:
    return Case(module, func, tuple(inputs), label)


CASES: list[Case] = [
    # if/elif/else, ternaries, boolean short-circuits, walrus, assert, multi-line statements
    _c("branches", "classify", "negative", (-5,)),
    _c("branches", "classify", "all-branches", (-5,), (0,), (3,), (50,)),
    _c("branches", "nested_if", "pos-pos", (1, 1)),
    _c("branches", "nested_if", "all", (1, 1), (1, -1), (-1, 1), (-1, -1)),
    _c("branches", "ternary", "even-small", (4,)),
    _c("branches", "ternary", "both", (4,), (101,)),
    _c("branches", "short_circuit", "falsy-a", (0, 1, 2)),
    _c("branches", "short_circuit", "mixed", (0, 1, 2), (1, 0, 0), (1, 1, 1), (1, 0, 3)),
    _c("branches", "walrus", "short", ([1, 2],)),
    _c("branches", "walrus", "long-with-negatives", ([1, -2, 3, 4, -5],)),
    _c("branches", "checked", "pass", (3,)),
    _c("branches", "checked", "fail", (-1,)),
    _c("branches", "checked", "both", (3,), (-1,)),
    _c("branches", "multi_line", "small", (1, 1)),
    _c("branches", "multi_line", "big", (5, 5), (-20, 20)),
    _c("branches", "early_return", "all", ([],), ([1, 42, 3],), ([1, 2],)),
    _c("branches", "early_return", "empty", ([],)),
    _c("branches", "pass_and_docstring_only", "both", (True,), (False,)),
    # loops
    _c("loops", "for_else", "found", ([1, 2, 3], 2)),
    _c("loops", "for_else", "not-found", ([1, 2, 3], 9)),
    _c("loops", "for_else", "both", ([1, 2, 3], 2), ([], 1)),
    _c("loops", "while_else", "exhausted", (5,)),
    _c("loops", "while_else", "break", (20,)),
    _c("loops", "while_else", "zero", (0,)),
    _c("loops", "nested", "3x3", (3, 3)),
    _c("loops", "nested", "empty", (0, 3)),
    _c("loops", "while_true", "one-and-many", (1,), (4,)),
    _c("loops", "empty_loops", "empty", ([],)),
    _c("loops", "empty_loops", "negative-sum", ([1, -25],)),
    _c("loops", "loop_with_try", "continue-break", (["1", "x", "2", None, "3"],)),
    _c("loops", "loop_with_try", "clean", (["1", "2"],)),
    # exceptions and with-statements
    _c("exceptions", "caught", "none", ("none",)),
    _c("exceptions", "caught", "all", ("none",), ("value",), ("key",)),
    _c("exceptions", "uncaught", "raise", (True,)),
    _c("exceptions", "uncaught", "both", (False,), (True,)),
    _c("exceptions", "reraised", "raise", (True,)),
    _c("exceptions", "reraised", "both", (False,), (True,)),
    _c("exceptions", "raised_in_finally", "raise", (True,)),
    _c("exceptions", "raised_in_finally", "both", (False,), (True,)),
    _c("exceptions", "chained", "both", ("12",), ("x",)),
    _c("exceptions", "nested_try", "both", (5,), (0,)),
    _c("exceptions", "call_raiser", "both", (False,), (True,)),
    _c("exceptions", "with_statement", "clean", (False, False)),
    _c("exceptions", "with_statement", "suppressed", (True, True)),
    _c("exceptions", "with_statement", "propagated", (False, True)),
    _c("exceptions", "with_statement", "all", (False, False), (True, True), (False, True)),
    _c("exceptions", "with_generator_cm", "both", (False,), (True,)),
    _c("exceptions", "multiple_with", "both", (False,), (True,)),
    _c("exceptions", "except_tuple", "all", (0,), (1,), (2,)),
    # generators
    _c("generators", "consume_all", "five", (5,)),
    _c("generators", "consume_all", "zero", (0,)),
    _c("generators", "abandon_early", "abandon", (5,)),
    _c("generators", "abandon_early", "empty", (0,)),
    _c("generators", "drive_accumulator", "stop", ("stop",)),
    _c("generators", "drive_accumulator", "throw", ("throw",)),
    _c("generators", "drive_accumulator", "close", ("close",)),
    _c("generators", "drive_accumulator", "all", ("stop",), ("throw",), ("close",)),
    _c("generators", "drive_delegating", "three", ([1, 2, 3],)),
    _c("generators", "drive_delegating", "empty", ([],)),
    _c("generators", "generator_with_return_in_loop", "both", (3,), (20,)),
    # async
    _c("asyncs", "middle", "small", (2,)),
    _c("asyncs", "middle", "big", (3,)),
    _c("asyncs", "fan_out", "mixed", ([1, 2, 3, 4, 5],)),
    _c("asyncs", "consume", "clean", (6, False)),
    _c("asyncs", "consume", "suppressed", (6, True)),
    _c("asyncs", "consume", "empty", (0, False)),
    _c("asyncs", "comprehension", "six", (6,)),
    _c("asyncs", "failing", "both", (1,), (-1,)),
    _c("asyncs", "abandon_async_gen", "both", (5,), (0,)),
    _c("asyncs", "tasks_and_wait", "mixed", ([1, -1, 2],)),
    _c("asyncs", "consume_together", "two", (3,)),
    # exceptions thrown into suspended generators and coroutines
    _c("throws", "throw_into_handler", "caught", ("caught",)),
    _c("throws", "throw_into_handler", "finally", ("finally",)),
    _c("throws", "throw_right_after_yield", "once", ()),
    _c("throws", "throw_out", "one", (1,)),
    _c("throws", "throw_through_finally", "both", (4,)),
    _c("throws", "throw_through_delegation", "once", ()),
    _c("throws", "athrow_out", "one", (1,)),
    _c("throws", "cancel_waiter", "cancelled", (True,)),
    _c("throws", "cancel_waiter", "both", (False,), (True,)),
    _c("throws", "cancel_swallowed", "once", ()),
    _c("throws", "cancel_sleeper", "once", ()),
    _c("throws", "throw_in_turn", "once", ()),
    # comprehensions and lambdas
    _c("comprehensions", "list_comp", "six", (6,)),
    _c("comprehensions", "list_comp", "empty", (0,)),
    _c("comprehensions", "set_and_dict", "mixed", (["a", "", "_x", "abc"],)),
    _c("comprehensions", "nested_comp", "five", (5,)),
    _c("comprehensions", "generator_expr", "five", (5,)),
    _c("comprehensions", "generator_expr", "zero", (0,)),
    _c("comprehensions", "matrix", "three", (3,)),
    _c("comprehensions", "lambdas", "mixed", ([3, 1, 4, 1, 5, 9, 2, 6],)),
    _c("comprehensions", "multi_line_lambda", "both", (True,), (False,)),
    # decorators, classes, recursion, closures
    _c("objects", "decorated_calls", "both", (2,), (3,), (0,)),
    _c("objects", "decorate_at_runtime", "zero-two", (0,), (2,)),
    _c("objects", "use_vectors", "labels", (2.0, "a"), (3.0, "")),
    _c("objects", "factorial", "five", (5,)),
    _c("objects", "fib_tree", "six", (6,)),
    _c("objects", "use_closures", "steps", ([1, 2, -1, 3],)),
    _c("objects", "inheritance", "both", (True,), (False,)),
    # a request handler spanning several modules
    _c("service", "handle_sync", "ok-kinds", ("kind=sum;qty=4",), ("kind=search;qty=9",)),
    _c(
        "service",
        "handle_sync",
        "all",
        ("kind=sum;qty=4",),
        ("kind=search;qty=3",),
        ("kind=shape;qty=2",),
        ("kind=other;qty=3",),
        ("qty=x",),
        ("kind=sum;qty=99",),
        ("",),
    ),
    _c("service", "handle_async", "ok", ("kind=a;qty=3",)),
    _c("service", "handle_async", "all", ("kind=a;qty=3",), ("kind=sync;qty=9",), ("qty=x",)),
    # corners
    _c("edge", "return_in_finally", "both", (False,), (True,)),
    _c("edge", "continue_in_finally", "mixed", ([1, -2, 0, 3, 200, 5],)),
    _c("edge", "continue_in_finally", "plain", ([1, 2],)),
    _c("edge", "except_group", "all", ([],), (["value"],), (["type", "value"],), (["type"],)),
    _c("edge", "deep_unwind", "both", (1,), (5,)),
    _c("edge", "deep_unwind", "raise", (5,)),
    _c("edge", "defines_things", "both", (3,), (4,)),
    _c("edge", "generator_cleanup", "break", (2,)),
    _c("edge", "generator_cleanup", "exhaust", (9,)),
    _c("edge", "generator_raises", "both", (2,), (9,)),
    _c("edge", "recursion_with_errors", "depths", (1,), (2,), (5,)),
    _c("edge", "async_edges", "small", (2,)),
    _c("edge", "async_edges", "big", (4,)),
    _c("edge", "while_complex", "all", (0, 0), (5, 1), (4, -1), (3, -1)),
    _c("edge", "one_liners", "both", (5,), (-1,), (60,)),
    # match statements
    _c("matching", "match_literal", "all", ("start",), ("halt",), ("jump",)),
    _c("matching", "match_literal", "start", ("start",)),
    _c(
        "matching",
        "match_class",
        "all",
        (Point(0, 0),),
        (Point(0, 4),),
        (Point(3, 3),),
        (Point(1, 2),),
        (1000,),
        (5,),
        ("s",),
    ),
    _c(
        "matching", "match_sequence", "all", ([],), ([1],), ([2, 1],), ([1, 2],), ([1, 2, 3],), (7,)
    ),
    _c(
        "matching",
        "match_mapping",
        "all",
        ({"type": "click", "pos": (1, 2)},),
        ({"type": "key", "key": "a"},),
        ({"type": "key", "key": "ab"},),
        ({"type": "x"},),
    ),
    _c("matching", "match_no_wildcard", "miss", (3,)),
    _c("matching", "match_no_wildcard", "all", (1,), (2,), (3,)),
]
