"""What a sampled request costs the sys.monitoring core as the registered code grows.

A service's own code under the source roots is registered once it has run: thousands of code
objects in a large service, of which a request calls a few dozen. This benchmark generates a
module of ``N`` functions under a temporary root, calls every one once (all registered), then
serves "requests" that each call ``--calls`` functions drawn from a hot set of ``--hot``
functions. One request in ``--every`` runs inside ``capture_coverage`` (sampled); the others
run outside any scope, as unsampled traffic does. Blocks with sampling alternate with blocks
without; the table gives the CPU each sampled request adds (the median over blocks of the
difference divided by the sampled requests) and the ratio of CPU per request.

    python benchmarks/bench_toggle.py                    # N = 100, 1,000, 5,000
    python benchmarks/bench_toggle.py --sizes 200,20000 --blocks 6
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

FUNCTION = '''
def f{i}(x):
    total = 0
    for k in range(x):
        if k % 2:
            total += k
        else:
            total -= 1
    return total
'''


def load(directory: Path, n: int) -> Any:
    """Import a generated module of ``n`` functions from ``directory``."""
    path = directory / f"toggle_{n}.py"
    path.write_text("".join(FUNCTION.format(i=i) for i in range(n)))
    spec = importlib.util.spec_from_file_location(f"toggle_{n}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure(n: int, args: argparse.Namespace) -> dict[str, float]:
    """CPU per request with and without sampling, for ``n`` registered functions."""
    from runcov.testing import capture_coverage

    with tempfile.TemporaryDirectory(prefix="runcov-toggle-") as tmp:
        module = load(Path(tmp), n)
        functions = [getattr(module, f"f{i}") for i in range(n)]
        with capture_coverage(source=[tmp]):
            pass  # the root is added: the module's code is found
        for f in functions:
            f(3)  # registered
        rng = random.Random(1)
        hot = functions[: args.hot]
        plan = [[rng.choice(hot) for _ in range(args.calls)] for _ in range(args.requests)]

        def block(sampling: bool) -> float:
            started = time.process_time()
            for i, calls in enumerate(plan):
                if sampling and i % args.every == 0:
                    with capture_coverage(source=[tmp]):
                        for f in calls:
                            f(3)
                else:
                    for f in calls:
                        f(3)
            return time.process_time() - started

        block(True)
        block(False)  # warm-up
        plain, sampled = [], []
        for rep in range(args.blocks):
            order = (False, True) if rep % 2 == 0 else (True, False)
            for sampling in order:
                (sampled if sampling else plain).append(block(sampling))
        per_block = args.requests // args.every + (args.requests % args.every > 0)
        extra = [(s - p) / per_block for s, p in zip(sampled, plain)]
        return {
            "plain_us": statistics.median(plain) / args.requests * 1e6,
            "sampled_us": statistics.median(sampled) / args.requests * 1e6,
            "extra_us": statistics.median(extra) * 1e6,
            "ratio": statistics.median(s / p for s, p in zip(sampled, plain)),
        }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="100,1000,5000", help="registered functions")
    parser.add_argument("--hot", type=int, default=50, help="functions requests draw from")
    parser.add_argument("--calls", type=int, default=20, help="calls per request")
    parser.add_argument("--every", type=int, default=100, help="one sampled request in so many")
    parser.add_argument("--requests", type=int, default=20000, help="requests per block")
    parser.add_argument("--blocks", type=int, default=8, help="blocks per configuration")
    args = parser.parse_args(argv)
    import runcov.tracing

    core = runcov.tracing.get_core()
    print(f"Python {platform.python_version()}, core {core.name}; requests call {args.calls} of "
          f"{args.hot} hot functions, one in {args.every} sampled; {args.blocks} blocks of "
          f"{args.requests} requests per configuration\n")
    print("| registered functions | CPU µs/request, no sampling | with sampling "
          "| µs per sampled request | ratio |")
    print("|---:|---:|---:|---:|---:|")
    for n in (int(x) for x in args.sizes.split(",")):
        r = measure(n, args)
        print(f"| {n:,} | {r['plain_us']:.2f} | {r['sampled_us']:.2f} | {r['extra_us']:.1f} "
              f"| {r['ratio']:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
