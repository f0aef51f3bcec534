#!/usr/bin/env python3
"""Paired A/B of proxies: every contender runs at once (each on its own ports, all pinned to
CPU 1, idle while not measured) and short load runs alternate between them, order reversed every
round. Finer interleaving than proxy_bench.py's restart-per-round, so the VM's drift and CPU
steal land on both sides of each pair; prints the median of per-pair ratios, which moves much
less than single medians. For A/B-ing two flotilla builds, or a build against HAProxy.

Usage:
  python3 bench/proxy_ab.py --binary A [--binary B ...] [--haproxy] [--scenario http1|tls|h2]
                            [--pairs 16] [--duration 3] [--connections 64]
The first contender is the baseline. Same backend, configs and load generators as
proxy_bench.py. Loopback only; bounded by --pairs x --duration.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import proxy_bench as pb  # noqa: E402


def start(kind, binary, index):
    """Starts one contender on ports 18100+i (plain) and 18200+i (TLS), with proxy_bench.py's
    configuration for it; returns (name, process, plain port, TLS port, temp dir)."""
    d = tempfile.mkdtemp(prefix="flotilla-ab-")
    pb.make_cert(d)
    plain, tls = 18100 + index, 18200 + index
    p = pb.start_haproxy(d, plain, tls) if kind == "haproxy" else pb.start_flotilla(d, binary, plain, tls)
    name = "haproxy" if kind == "haproxy" else f"{index}:{os.path.basename(binary)}"
    return name, p, plain, tls, d


def load(scenario, plain, tls, duration, conns):
    """proxy_bench.py's scenario `scenario`, pointed at one contender's ports."""
    run = {key: fn for key, _, fn in pb.SCENARIOS}[scenario]
    return run(duration, conns, plain, tls)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", action="append", default=[], help="a flotilla binary (repeatable)")
    ap.add_argument("--haproxy", action="store_true", help="also run HAProxy")
    ap.add_argument("--scenario", default="http1", choices=["http1", "tls", "h2"])
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--duration", type=int, default=3)
    ap.add_argument("--connections", type=int, default=64)
    args = ap.parse_args()
    kinds = [("flotilla", b) for b in args.binary] + ([("haproxy", "")] if args.haproxy else [])
    if len(kinds) < 2:
        ap.error("need two contenders: --binary twice, or --binary and --haproxy")
    bd = tempfile.mkdtemp(prefix="flotilla-ab-backend-")
    backend = pb.start_backend(bd)
    running = []
    try:
        for i, (kind, binary) in enumerate(kinds):
            running.append(start(kind, binary, i))
        time.sleep(1)
        for _, _, plain, tls, _ in running:  # warm-up: pools, TLS session caches
            load(args.scenario, plain, tls, 2, args.connections)
        runs = {name: [] for name, *_ in running}
        for r in range(args.pairs):
            for name, p, plain, tls, _ in running if r % 2 == 0 else reversed(running):
                pids = pb.tree(p.pid)
                cpu0, steal0 = pb.cpu_ticks(pids), pb.steal_jiffies()
                rps, total, _, tail, errs, _ = load(args.scenario, plain, tls, args.duration, args.connections)
                if errs:
                    raise RuntimeError(f"{name}: {errs} failed requests; the run is not valid")
                cpu = (pb.cpu_ticks(pids) - cpu0) / pb.TICK * 1e6 / max(total, 1)
                runs[name].append((rps, cpu, tail or 0.0, pb.steal_pct(steal0, pb.steal_jiffies())))
            print(f"pair {r + 1}: " + "  ".join(
                f"{n} {runs[n][-1][0]:.0f} req/s {runs[n][-1][1]:.1f} us/req tail {runs[n][-1][2]:.2f} ms "
                f"steal {runs[n][-1][3]:.1f}%" for n, *_ in running), file=sys.stderr, flush=True)
    finally:
        for _, p, _, _, d in running:
            pb.stop(p)
            shutil.rmtree(d, ignore_errors=True)
        pb.stop(backend)
        shutil.rmtree(bd, ignore_errors=True)

    tail_name = "max ms" if args.scenario == "h2" else "p99 ms"
    base = running[0][0]
    print(f"\n{args.scenario}, {args.pairs} pairs of {args.duration}s runs, {args.connections} connections; "
          f"ratios are medians of per-pair ratios against {base}.\n")
    print(f"| contender | req/s | CPU µs/req | {tail_name} | req/s ratio | CPU ratio | {tail_name} ratio | lower tail |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, *_ in running:
        mine, theirs = runs[name], runs[base]
        med = [statistics.median(x[k] for x in mine) for k in range(3)]
        ratio = [statistics.median(a[k] / b[k] for a, b in zip(mine, theirs) if b[k]) for k in range(3)]
        lower = sum(a[2] < b[2] for a, b in zip(mine, theirs))
        print(f"| {name} | {med[0]:.0f} | {med[1]:.1f} | {med[2]:.2f} | {ratio[0]:.3f} | {ratio[1]:.3f} | "
              f"{ratio[2]:.3f} | {lower}/{len(mine)} |")


if __name__ == "__main__":
    main()
