"""What a measured generator's run costs per resumption: a ``@runcov.critical`` generator
consumed by a ``for`` loop, sampled (every run measured) against no agent, side by side.

Each configuration runs in a process of its own (no agent; runcov at a rate of 0, where the
run is decided and not measured; runcov at a rate of 1, every run measured), and times runs of
a generator yielding ``--items`` rows with a branch each, the consumer doing a little work of
its own under the source root between two resumptions. Medians of ``--runs`` runs after a
warm-up; the ratio to no agent is the cost a run pays, and the extra per resumption is that
cost divided by the items.

A measured run is active (its code armed) only while the generator's code runs, from a
resumption to the next pause: each resumption activates its scope and each pause lets it go,
which is what this measures beyond the line events of the generator's own code.

    python benchmarks/bench_generator_run.py                # 2,000 items, 31 runs
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

WORK = textwrap.dedent(
    """
    def rows(n):
        for i in range(n):
            if i % 3:
                yield i
            else:
                yield -i


    def note(x):
        return x if x > 0 else -x
    """
)

RUNNER = textwrap.dedent(
    """
    import json, statistics, sys, time
    root, mode, items, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    sys.path.insert(0, root)
    if mode != "none":
        import runcov

        runcov.start(source=[root], exporter_endpoint="http://127.0.0.1:9",
                     sample_rate=float(mode), max_per_second=0, saturation=False,
                     metrics_interval=0)
    import work

    make = work.rows
    if mode != "none":
        make = runcov.critical(work.rows)

    def run():
        started = time.perf_counter()
        total = 0
        for x in make(items):
            total += work.note(x)
        return time.perf_counter() - started

    for _ in range(5):
        run()
    print(json.dumps(statistics.median(run() for _ in range(runs))))
    """
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=31)
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the configurations")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "work.py").write_text(WORK)
        (root / "runner.py").write_text(RUNNER)
        modes = ("none", "0", "1")
        times: dict[str, list[float]] = {m: [] for m in modes}
        for _ in range(args.rounds):
            for mode in modes:
                out = subprocess.run(
                    [sys.executable, str(root / "runner.py"), str(root), mode, str(args.items),
                     str(args.runs)],
                    capture_output=True, text=True, check=True, timeout=600,
                )
                times[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = statistics.median(times["none"])
    print(f"Python {sys.version.split()[0]}, {args.items} items, medians of {args.rounds} "
          f"processes x {args.runs} runs")
    for mode, label in (("none", "no agent"), ("0", "rate 0"), ("1", "rate 1 (measured)")):
        t = statistics.median(times[mode])
        extra = (t - base) / args.items * 1e6
        print(f"  {label:18} {t * 1e3:8.2f} ms  {t / base:5.2f}x  {extra:+6.2f} us/item")


if __name__ == "__main__":
    main()
