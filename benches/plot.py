#!/usr/bin/env python3
"""Plots the batch_size sweep of `cargo bench --bench load -- --sweep`.

Reads target/bench/results.csv and writes docs/benchmarks-batch-size.png: persisted rows/s and
PUBACK p99 against batch_size, for `async` and `sync` mode, one column per database.
Needs matplotlib (pip install matplotlib).
"""
import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

root = Path(__file__).resolve().parent.parent
src = Path(sys.argv[1]) if len(sys.argv) > 1 else root / "target/bench/results.csv"
out = Path(sys.argv[2]) if len(sys.argv) > 2 else root / "docs/benchmarks-batch-size.png"
rows = [r for r in csv.DictReader(src.open()) if r["scenario"].startswith("sweep-")]
dbs = sorted({r["db"] for r in rows})
if not rows:
    sys.exit(f"no sweep rows in {src}: run `cargo bench --bench load -- --sweep` first")

fig, axes = plt.subplots(2, len(dbs), figsize=(6 * len(dbs), 8), squeeze=False)
for col, db in enumerate(dbs):
    for mode, style in (("async", "o-"), ("sync", "s--")):
        pts = sorted(
            (int(r["batch_size"]), float(r["persisted_per_s"]), float(r["p99_ms"]))
            for r in rows
            if r["db"] == db and r["scenario"] == f"sweep-{mode}"
        )
        if not pts:
            continue
        xs = [p[0] for p in pts]
        label = f"{mode} ({'8 publishers x 64 in flight' if mode == 'async' else '64 publishers x 1 in flight'})"
        axes[0][col].plot(xs, [p[1] for p in pts], style, label=label)
        axes[1][col].plot(xs, [p[2] for p in pts], style, label=label)
    axes[0][col].set_title(f"{db}: persisted rows/s")
    axes[1][col].set_title(f"{db}: PUBACK p99 (ms)")
    for ax in (axes[0][col], axes[1][col]):
        ax.set_xscale("log")
        ax.set_xlabel("batch_size")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    axes[1][col].set_yscale("log")
fig.suptitle("mqtt-offline-messages: throughput and latency against batch_size (batch_time = 5 ms)")
fig.tight_layout()
out.parent.mkdir(parents=True, exist_ok=True)
fig.savefig(out, dpi=100)
print(out)
