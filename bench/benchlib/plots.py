"""bench/results/msgs_cpu.png and latency_cdf.png (matplotlib, Agg backend)."""
import math

from .procs import say
from .servers import REFERENCE

PERCENTILES = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999), ("max", 0.9999)]


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        say("matplotlib missing (ECHOPORT_SETUP_BENCH=1 ci/setup): no plots")
        return None


def msgs_cpu(tp, path):
    plt = _pyplot()
    if not plt:
        return
    cells, res = tp["cells"], tp["results"]
    servers = [s for s in tp["servers"] if s in res]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(12, 8), sharex=True)
    width = 0.8 / max(1, len(servers))
    for i, name in enumerate(servers):
        xs = [c + (i - (len(servers) - 1) / 2) * width for c in range(len(cells))]
        get = lambda cell, key: (res[name].get(cell) or {}).get(key) or 0
        ax1.bar(xs, [get(c, "msgs_per_s") / 1e3 for c in cells], width, label=name)
        if name != REFERENCE:
            ax2.bar(xs, [get(c, "cpu_us") for c in cells], width, label=name)
    ax1.set_yscale("log")
    ax1.set_ylabel("k msgs/s, log scale (higher is better)")
    ax2.set_ylabel("server CPU µs per message (lower is better)")
    ax2.set_xticks(range(len(cells)))
    ax2.set_xticklabels(cells, rotation=15)
    ax1.legend(ncol=len(servers), fontsize="small")
    ax1.set_title(f"echoport and peers ({tp['mode']}, {tp['date']})")
    for ax in (ax1, ax2):
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def latency_cdf(tp, cells, path):
    """Per server, the load generator's percentiles p50..max on a 'nines' scale."""
    plt = _pyplot()
    if not plt:
        return
    cells = [c for c in cells if c in tp["cells"]]
    fig, axes = plt.subplots(1, len(cells), figsize=(6 * len(cells), 5), squeeze=False)
    for ax, cell in zip(axes[0], cells):
        for name in tp["servers"]:
            s = tp["results"].get(name, {}).get(cell) or {}
            lat = s.get("lat_us") or {}
            pts = [(lat[k], q) for k, q in PERCENTILES if lat.get(k)]
            if pts:
                ax.plot([p[0] for p in pts], [-math.log10(1 - p[1]) for p in pts],
                        marker="o", label=name)
        ax.set_xscale("log")
        ax.set_yticks([-math.log10(1 - q) for _, q in PERCENTILES])
        ax.set_yticklabels([k for k, _ in PERCENTILES])
        ax.set_xlabel("round-trip latency µs")
        ax.set_title(cell)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
