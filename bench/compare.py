"""Keyed, batched end-to-end throughput of this checkout against a baseline ``src`` directory.

Each round writes fresh topics with the same records, measures the read-and-parse ceiling, then
runs one worker of each (order flipped every round, so both see the same machine). Prints each
round and the medians; the ceiling lets the ratios be set against ``slostream bench``'s.
"""

import argparse
import asyncio
import os
import statistics
import tempfile
import time

from slostream.bench.common import REPORT_S, SPAN_S, BenchBroker, _ceiling, _expected_windows, _payloads, _prepare
from slostream.bench.throughput import _bench_definitions, _end_to_end
from slostream.config import Settings
from slostream.io.broker import EmbeddedBroker


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("baseline_src")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--slos", action="store_true", help="both workers run the bench's SLOs and policies")
    args = parser.parse_args()
    t0 = time.time() - SPAN_S - 2 * REPORT_S
    records = 20_000
    payloads = _payloads(100, records, t0)
    measurements = records * 100
    expected = _expected_windows(t0)
    definitions = _bench_definitions(os.path.join(tempfile.mkdtemp(), "defs.yaml")) if args.slos else None
    sources = {"baseline": args.baseline_src, "this": None}
    mps: dict[str, list[float]] = {"ceiling": [], "baseline": [], "this": []}
    with EmbeddedBroker() as embedded:
        broker = BenchBroker(Settings(broker=embedded.url), tempfile.mkdtemp())
        for number in range(args.rounds):
            topics = {f"r{number}{name}": (payloads, 1) for name in ("ceiling", *sources)}
            asyncio.run(_prepare(broker, topics))
            seconds, _ = asyncio.run(_ceiling(broker, f"r{number}ceiling.measurements", len(payloads)))
            mps["ceiling"].append(measurements / seconds)
            order = list(sources) if number % 2 == 0 else list(sources)[::-1]
            for name in order:
                seconds = _end_to_end(broker, f"r{number}{name}.", expected, definitions, source=sources[name])
                mps[name].append(measurements / seconds)
            print(f"round {number}: " + ", ".join(f"{k} {v[-1] / 1e3:.0f} k/s" for k, v in mps.items()), flush=True)
    medians = {name: statistics.median(runs) for name, runs in mps.items()}
    print("medians: " + ", ".join(f"{k} {v / 1e3:.0f} k/s" for k, v in medians.items()))
    ceiling = medians["ceiling"]
    print(f"ratio: baseline {medians['baseline'] / ceiling:.3f}, this {medians['this'] / ceiling:.3f}")
    per_round = [this / base for base, this in zip(mps["baseline"], mps["this"])]
    print(f"this / baseline: median of rounds {statistics.median(per_round):.3f} "
          f"(rounds {', '.join(f'{r:.2f}' for r in per_round)})")


if __name__ == "__main__":
    main()
