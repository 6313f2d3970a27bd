"""Concurrent captures (asyncio tasks, threads, thread pools) each measure only their own work."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any, Callable

import pytest

from runcov.testing import capture_coverage
from tests.corpus import branches, comprehensions, loops, objects, service

CORPUS_DIR = os.path.realpath(os.path.join(os.path.dirname(__file__), "corpus"))
#: How long a synchronisation wait may block before the test gives up (a hang, not a timing check).
WAIT = 30.0

Snapshot = tuple[dict[str, frozenset[int]], dict[str, frozenset[tuple[int, int]]]]

KINDS = ("sum", "search", "shape", "other", "sync", "a")


def request(i: int) -> str:
    """A different request for each index: kinds, sizes and invalid ones."""
    if i % 10 == 9:
        return "kind=sum;qty=x"
    if i % 17 == 16:
        return f"kind=sum;qty={60 + i}"
    return f"kind={KINDS[i % len(KINDS)]};qty={i % 13}"


def snapshot(cov: capture_coverage) -> Snapshot:
    """The capture's non-empty line and arc sets, hashable and comparable."""
    lines = {p: frozenset(v) for p, v in cov.lines.items() if v}
    arcs = {p: frozenset(v) for p, v in cov.arcs.items() if v}
    return lines, arcs


def describe(got: Snapshot, want: Snapshot) -> str:
    """Readable difference between two snapshots."""
    out = []
    for kind, mine, ref in (("lines", got[0], want[0]), ("arcs", got[1], want[1])):
        for path in sorted(set(mine) | set(ref)):
            a, b = mine.get(path, frozenset()), ref.get(path, frozenset())
            if a != b:
                name = os.path.relpath(path, CORPUS_DIR)
                out.append(f"{kind} {name}: extra {sorted(a - b)}, missing {sorted(b - a)}")
    return "; ".join(out)


class OpenCounter:
    """Counts captures open at the same time, to prove the test really overlapped them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def __enter__(self) -> None:
        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.now -= 1


def capture_alone(fn: Callable[[], Any]) -> tuple[Any, Snapshot]:
    """Run ``fn`` in this thread inside its own capture, with nothing else going on."""
    with capture_coverage(source=[CORPUS_DIR]) as cov:
        result = fn()
    return result, snapshot(cov)


async def _async_request(i: int, counter: OpenCounter | None = None) -> tuple[str, Snapshot]:
    async with capture_coverage(source=[CORPUS_DIR]) as cov:
        if counter is not None:
            counter.__enter__()
        await asyncio.sleep(0)
        result = await service.handle_async(request(i))
        await asyncio.sleep(0)
        if counter is not None:
            counter.__exit__()
    return result, snapshot(cov)


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Make the interpreter switch threads very often so that threads really interleave."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def test_interleaved_asyncio_requests_match_each_request_alone() -> None:
    """60 tasks, each with its own capture, interleaving at every await."""
    n = 60
    alone = [asyncio.run(_async_request(i)) for i in range(n)]
    distinct: list[Snapshot] = []
    for _, snap in alone:
        if snap not in distinct:
            distinct.append(snap)
    assert len(distinct) > 5  # the requests really take different paths

    counter = OpenCounter()

    async def all_at_once() -> list[tuple[str, Snapshot]]:
        return await asyncio.gather(*(_async_request(i, counter) for i in range(n)))

    together = asyncio.run(all_at_once())
    assert counter.peak == n  # every capture was open at once
    for i, ((res_alone, snap_alone), (res_together, snap_together)) in enumerate(
        zip(alone, together, strict=True)
    ):
        assert res_together == res_alone
        assert snap_together == snap_alone, f"request {i} ({request(i)}): " + describe(
            snap_together, snap_alone
        )


def test_interleaved_requests_in_one_task_group_share_nothing() -> None:
    """Tasks created with ensure_future inside one loop, started in reverse order, stay apart."""
    n = 52

    async def main() -> list[tuple[str, Snapshot]]:
        tasks = [asyncio.ensure_future(_async_request(i)) for i in reversed(range(n))]
        done = [await t for t in tasks]
        return list(reversed(done))

    together = asyncio.run(main())
    for i, (res, snap) in enumerate(together):
        res_alone, snap_alone = asyncio.run(_async_request(i))
        assert res == res_alone
        assert snap == snap_alone, f"request {i}: " + describe(snap, snap_alone)


def test_threads_measure_their_own_requests(fast_switching: None) -> None:
    """8 threads run requests concurrently, each in its own capture; 2 more run uncaptured."""
    n_threads, per_thread = 8, 6
    indices = [[t * per_thread + k for k in range(per_thread)] for t in range(n_threads)]
    alone = {i: capture_alone(lambda i=i: _sync_with_classify(i)) for row in indices for i in row}
    results: dict[int, tuple[str, Snapshot]] = {}
    errors: list[BaseException] = []
    counter = OpenCounter()
    barrier = threading.Barrier(n_threads + 2)
    # Every round, all workers are inside their captures before any of them runs its request.
    inside = threading.Barrier(n_threads)
    stop = threading.Event()

    def worker(row: list[int]) -> None:
        try:
            barrier.wait(WAIT)
            for i in row:
                with capture_coverage(source=[CORPUS_DIR]) as cov, counter:
                    inside.wait(WAIT)
                    result = _sync_with_classify(i)
                results[i] = (result, snapshot(cov))
        except BaseException as exc:
            errors.append(exc)

    def noise() -> None:
        # Uncaptured corpus code that no request runs: must show up in no capture.
        barrier.wait(WAIT)
        while not stop.is_set():
            comprehensions.matrix(4)
            objects.fib_tree(5)

    threads = [threading.Thread(target=worker, args=(row,)) for row in indices]
    noisy = [threading.Thread(target=noise) for _ in range(2)]
    for t in threads + noisy:
        t.start()
    for t in threads:
        t.join(WAIT)
    stop.set()
    for t in noisy:
        t.join(WAIT)
    assert not errors, errors
    assert counter.peak == n_threads
    for i, (res, snap) in sorted(results.items()):
        res_alone, snap_alone = alone[i]
        assert res == res_alone
        assert snap == snap_alone, f"request {i}: " + describe(snap, snap_alone)
    assert len(results) == n_threads * per_thread


def _sync_with_classify(i: int) -> str:
    """A request, then more calls so that the capture stays open across thread switches."""
    result = service.handle_sync(request(i))
    for _ in range(20):
        branches.classify(i)
    return result


# -- thread-pool hand-off ---------------------------------------------------------------------


def _alone_nested() -> Snapshot:
    return capture_alone(lambda: loops.nested(3, 3))[1]


def test_to_thread_counts_toward_the_capture() -> None:
    """``asyncio.to_thread`` work inside a capture is measured by it."""

    async def main() -> Snapshot:
        async with capture_coverage(source=[CORPUS_DIR]) as cov:
            await asyncio.to_thread(loops.nested, 3, 3)
        return snapshot(cov)

    got = asyncio.run(main())
    want = _alone_nested()
    assert want[0], "the hand-off work itself was not measured alone"
    assert got == want, describe(got, want)


@pytest.mark.parametrize("executor", ["default", "own"])
def test_run_in_executor_counts_toward_the_capture(executor: str) -> None:
    """``loop.run_in_executor`` (default and explicit executors) inside a capture is measured."""

    async def main() -> Snapshot:
        loop = asyncio.get_running_loop()
        pool = concurrent.futures.ThreadPoolExecutor(2) if executor == "own" else None
        try:
            async with capture_coverage(source=[CORPUS_DIR]) as cov:
                await loop.run_in_executor(pool, loops.nested, 3, 3)
        finally:
            if pool is not None:
                pool.shutdown(wait=True)
        return snapshot(cov)

    got = asyncio.run(main())
    want = _alone_nested()
    assert got == want, describe(got, want)


def test_anyio_to_thread_counts_toward_the_capture() -> None:
    """anyio's worker threads (Starlette/FastAPI sync endpoints) count toward the capture too."""
    import anyio.to_thread

    async def main() -> Snapshot:
        async with capture_coverage(source=[CORPUS_DIR]) as cov:
            await anyio.to_thread.run_sync(loops.nested, 3, 3)
        return snapshot(cov)

    got = asyncio.run(main())
    want = _alone_nested()
    assert got == want, describe(got, want)


def test_executor_submit_counts_toward_the_capture() -> None:
    """``ThreadPoolExecutor.submit`` from synchronous code inside a capture is measured."""
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        with capture_coverage(source=[CORPUS_DIR]) as cov:
            assert pool.submit(loops.nested, 3, 3).result(WAIT) == loops.nested(3, 3)
        got = snapshot(cov)
    want = capture_alone(lambda: (loops.nested(3, 3), loops.nested(3, 3)))[1]
    assert got == want, describe(got, want)


def test_handoff_goes_to_its_own_capture_only() -> None:
    """Two overlapping captures: pool work of one never lands in the other."""
    b_open = threading.Event()
    a_done = threading.Event()

    def pool_work() -> None:
        loops.nested(3, 3)
        assert b_open.wait(WAIT)  # B's capture is open while this work keeps running
        loops.while_else(5)
        a_done.set()

    async def a() -> Snapshot:
        async with capture_coverage(source=[CORPUS_DIR]) as cov:
            await asyncio.to_thread(pool_work)
        return snapshot(cov)

    async def b() -> Snapshot:
        async with capture_coverage(source=[CORPUS_DIR]) as cov:
            b_open.set()
            branches.classify(3)
            while not a_done.is_set():
                await asyncio.sleep(0.001)
            branches.classify(-3)
        return snapshot(cov)

    async def main() -> list[Snapshot]:
        return await asyncio.gather(a(), b())

    got_a, got_b = asyncio.run(main())
    want_a = capture_alone(lambda: (loops.nested(3, 3), loops.while_else(5)))[1]
    want_b = capture_alone(lambda: (branches.classify(3), branches.classify(-3)))[1]
    assert got_a == want_a, describe(got_a, want_a)
    assert got_b == want_b, describe(got_b, want_b)


def test_reused_worker_does_not_carry_the_capture(fast_switching: None) -> None:
    """A pool worker that ran a capture's work, then uncaptured work, records only the first."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        outsider_done = threading.Event()

        def outsider() -> None:
            # Submitted from a thread with no capture, to the same single worker.
            pool.submit(comprehensions.matrix, 3).result(WAIT)
            outsider_done.set()

        with capture_coverage(source=[CORPUS_DIR]) as cov:
            pool.submit(loops.nested, 3, 3).result(WAIT)
            t = threading.Thread(target=outsider)
            t.start()
            assert outsider_done.wait(WAIT)
            t.join(WAIT)
        got = snapshot(cov)
    want = _alone_nested()
    assert got == want, describe(got, want)


def test_threads_handing_off_to_a_shared_pool(fast_switching: None) -> None:
    """8 captured threads share one pool; each capture gets exactly its own pool work."""
    work: list[Callable[[], object]] = [
        lambda: loops.nested(3, 3),
        lambda: loops.while_else(20),
        lambda: branches.classify(-1),
        lambda: comprehensions.matrix(2),
        lambda: objects.factorial(4),
        lambda: branches.walrus([1, -2, 3, 4]),
        lambda: loops.for_else([1, 2], 9),
        lambda: comprehensions.list_comp(5),
    ]
    alone = [capture_alone(fn)[1] for fn in work]
    got: dict[int, Snapshot] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(work))
    with concurrent.futures.ThreadPoolExecutor(3) as pool:

        def worker(k: int) -> None:
            try:
                barrier.wait(WAIT)
                with capture_coverage(source=[CORPUS_DIR]) as cov:
                    pool.submit(work[k]).result(WAIT)
                got[k] = snapshot(cov)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(work))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
    assert not errors, errors
    for k, want in enumerate(alone):
        assert got[k] == want, f"work {k}: " + describe(got[k], want)


def test_first_capture_in_a_new_thread_measures() -> None:
    """A capture opened as the very first runcov call of a fresh thread records its work."""
    out: list[tuple[bool, Snapshot]] = []

    def fresh() -> None:
        with capture_coverage(source=[CORPUS_DIR]) as cov:
            loops.nested(3, 3)
        out.append((cov.traced, snapshot(cov)))

    t = threading.Thread(target=fresh)
    t.start()
    t.join(WAIT)
    ((traced, got),) = out
    assert traced
    assert got[0], "the fresh thread's capture recorded nothing"
    want = _alone_nested()
    assert got == want, describe(got, want)


def test_task_outliving_its_capture_records_nothing_more() -> None:
    """A task spawned inside a capture keeps running after it closed: its later work is in no
    capture (neither the closed one nor another one open at that time)."""

    async def main() -> tuple[Snapshot, Snapshot]:
        release = asyncio.Event()

        async def background() -> None:
            branches.classify(-7)  # runs while A is open: counts toward A
            await release.wait()
            loops.nested(3, 3)  # runs after A closed: counts toward nothing

        async with capture_coverage(source=[CORPUS_DIR]) as a:
            task = asyncio.ensure_future(background())
            await asyncio.sleep(0)
            branches.classify(7)
        async with capture_coverage(source=[CORPUS_DIR]) as b:
            release.set()
            await task
            objects.factorial(3)
        return snapshot(a), snapshot(b)

    got_a, got_b = asyncio.run(main())
    want_a = capture_alone(lambda: (branches.classify(-7), branches.classify(7)))[1]
    want_b = capture_alone(lambda: objects.factorial(3))[1]
    assert got_a == want_a, describe(got_a, want_a)
    assert got_b == want_b, describe(got_b, want_b)


def test_plain_thread_started_inside_a_capture_is_not_measured() -> None:
    """Only the capture's own thread/task and thread-pool hand-offs count, not a raw Thread."""
    with capture_coverage(source=[CORPUS_DIR]) as cov:
        t = threading.Thread(target=comprehensions.matrix, args=(3,))
        t.start()
        t.join(WAIT)
        loops.nested(3, 3)
    got = snapshot(cov)
    want = _alone_nested()
    assert got == want, describe(got, want)


def test_sampled_tasks_among_unsampled_ones() -> None:
    """Every 5th of 60 interleaved tasks opens a capture; the others run other corpus code
    uncaptured in between. Captured tasks record exactly their own request."""
    n = 60

    async def unsampled(i: int) -> None:
        for _ in range(3):
            await asyncio.sleep(0)
            comprehensions.matrix(i % 4 + 1)
            objects.fib_tree(4)

    async def main() -> dict[int, tuple[str, Snapshot]]:
        coros = [_async_request(i) if i % 5 == 0 else unsampled(i) for i in range(n)]
        results = await asyncio.gather(*coros)
        return {i: r for i, r in enumerate(results) if i % 5 == 0}

    together = asyncio.run(main())
    assert len(together) == n // 5
    for i, (res, snap) in together.items():
        res_alone, snap_alone = asyncio.run(_async_request(i))
        assert res == res_alone
        assert snap == snap_alone, f"request {i}: " + describe(snap, snap_alone)
