#!/usr/bin/env python3
"""Plots throughput and worker CPU per job against concurrency, one line per simulator latency.

Usage: plot.py sweep.jsonl scaling.png

Reads the JSON lines `wxdispatch bench --json` printed (scripts/bench.sh sweep). When a point
was measured more than once, the last measurement is plotted. The dashed lines are the ceiling
an in-flight window allows: concurrency / latency.
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src, dst):
    points = {}
    for line in open(src, encoding="utf-8"):
        line = line.strip()
        if not line:
            continue
        r = json.loads(line)
        if "error" in r or r.get("outcomes") != r.get("jobs"):
            continue
        points[(r["latency_ms"], r["concurrency"])] = r
    latencies = sorted({lat for lat, _ in points})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]
    for color, lat in zip(colors, latencies):
        rows = sorted((c, r) for (l, c), r in points.items() if l == lat)
        cs = [c for c, _ in rows]
        ax1.plot(cs, [r["jobs_per_sec"] for _, r in rows], "o-", color=color,
                 label=f"simulator latency {lat} ms")
        if lat > 0:
            ax1.plot(cs, [c * 1000.0 / lat for c in cs], "--", color=color, alpha=0.4,
                     label=f"ceiling: concurrency / {lat} ms")
        ax2.plot(cs, [r["worker_cpu_us_per_job"] for _, r in rows], "o-", color=color,
                 label=f"simulator latency {lat} ms")
        for c, r in rows:
            if lat == 100 and c == 200:
                ax1.annotate(f"{r['jobs_per_sec']:.0f} jobs/s\n(200 in flight, 100 ms)",
                             (c, r["jobs_per_sec"]), textcoords="offset points",
                             xytext=(-150, 25), arrowprops={"arrowstyle": "->"})
    ticks = sorted({c for _, c in points})
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(c) for c in ticks])
        ax.minorticks_off()
        ax.set_xlabel("concurrency (WXD_CONCURRENCY, sends in flight)")
        ax.grid(True, which="both", alpha=0.3)
    ax1.set_yscale("log")
    ax1.set_ylim(5, 20000)
    ax1.set_ylabel("jobs/s (first to last outcome)")
    ax1.set_title("Throughput: the in-flight window hides WeChat's latency")
    ax1.legend(fontsize=8, loc="upper left")
    ax2.set_ylabel("worker CPU per job (µs, user + system)")
    ax2.set_title("Worker CPU per job")
    ax2.set_ylim(bottom=0)
    ax2.axhline(60, color="grey", linestyle=":", label="target 60 µs")
    ax2.legend(fontsize=8)
    loads = sorted(float(r["loadavg_before"].split()[0]) for r in points.values())
    fig.suptitle("wxdispatch bench on 2 cores (broker, simulator and worker on one machine); "
                 f"1-min load average before the runs {loads[0]:.1f} to {loads[-1]:.1f}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
