"""A/B: the fastws echo server from two source trees, interleaved, in one sitting.

    python bench/echo/ab.py --tree before=/path/to/old/checkout --tree after=. \\
        [--cells 1x1x32 1x16x32 100x16x32 1x16x1048576] [--repeat 3] [--duration 1.5] \\
        [--placement cross|same] [--busy-poll US]

Each tree must have its extensions built in place (`python setup.py build_ext --inplace`).
For every cell (connections x messages in flight x size) and repeat, the trees run one after
the other (A B A B ...), each as `python -m fastws echo` started from its own directory,
driven by the C load generator of bench/echo (the same binary for both). Server on CPU 0,
load generator on CPU 1 (`--placement cross`) or on CPU 0 too (`same`: total CPU per message,
what a busy host sees). Prints medians of msg/s, server CPU us per message and the load
generator's CPU % (flagged "!" above 90 % of its core in the cross-core placement, where the
cell measures the load generator too), and the ratio of each tree to the first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import run  # noqa: E402  (bench/echo/run.py: load generator, /proc CPU, pinning)


def parse_cell(text: str) -> tuple[int, int, int]:
    conns, inflight, size = (int(part) for part in text.lower().split("x"))
    return conns, inflight, size


class TreeServer:
    def __init__(self, name: str, tree: str, busy_poll: float, logdir: str) -> None:
        self.name = name
        self.tree = os.path.abspath(tree)
        self.port = run.free_port()
        cmd = [run.PY, "-m", "fastws", "echo", "--port", str(self.port), "--no-compression",
               "--max-message-size", str(64 << 20), "--busy-poll", str(busy_poll)]
        env = dict(os.environ, PYTHONPATH=self.tree)
        with open(os.path.join(logdir, f"{name}.log"), "ab") as log:   # the child keeps its copy
            self.proc = subprocess.Popen(cmd, cwd=self.tree, env=env, stdout=log,
                                         stderr=subprocess.STDOUT,
                                         preexec_fn=run.pin(run.SERVER_CPU))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                run.socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{name}: server exited; see {logdir}") from None
                time.sleep(0.05)
        raise RuntimeError(f"{name}: server did not listen")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("--cells", nargs="+", default=["1x1x32", "1x16x32", "100x16x32",
                                                        "1x16x1048576"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--duration", type=float, default=1.5)
    parser.add_argument("--warmup", type=float, default=0.3)
    parser.add_argument("--placement", choices=["cross", "same"], default="cross")
    parser.add_argument("--busy-poll", type=float, default=25.0, metavar="US")
    args = parser.parse_args()
    trees = [entry.split("=", 1) for entry in args.tree]
    build = tempfile.mkdtemp(prefix="fastws-ab-")
    run.build_c(build)
    run.LOAD_CPU = run.SERVER_CPU if args.placement == "same" else 1
    servers = [TreeServer(name, path, args.busy_poll, build) for name, path in trees]
    results: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    try:
        for cell in args.cells:
            conns, inflight, size = parse_cell(cell)
            for _ in range(args.repeat):
                for server in servers:
                    cpu0 = run.cpu_seconds(server.proc.pid)
                    r = run.run_loadgen(build, server.port, "ws", conns, inflight, size,
                                        args.duration, args.warmup)
                    cpu = run.cpu_seconds(server.proc.pid) - cpu0
                    if not r.get("ok", True) or not r.get("total_messages"):
                        print(f"  !! {server.name} {cell}: {r.get('error')}", flush=True)
                        continue
                    rate = r["msgs_per_s"]
                    results.setdefault((cell, server.name), []).append(
                        (rate, cpu / r["total_messages"] * 1e6, r.get("cpu_pct", 0.0)))
                    print(f"  {cell:>14} {server.name:>10}: {rate:12,.0f} msg/s "
                          f"{cpu / r['total_messages'] * 1e6:8.2f} us/msg  loadgen "
                          f"{r.get('cpu_pct', 0.0):.0f}%", flush=True)
    finally:
        for server in servers:
            server.stop()
    print(f"\nplacement {args.placement}, busy poll {args.busy_poll:g} us, medians of "
          f"{args.repeat} interleaved runs")
    first = trees[0][0]
    for cell in args.cells:
        base = results.get((cell, first))
        line = [f"{cell:>14}"]
        for name, _ in trees:
            runs = results.get((cell, name))
            if not runs:
                line.append(f"{name}: -")
                continue
            rate = statistics.median(r for r, _, _ in runs)
            cpu = statistics.median(c for _, c, _ in runs)
            loadgen = statistics.median(g for _, _, g in runs)
            busy = loadgen > run.LOADGEN_BUSY_PCT and args.placement == "cross"
            flag = "!" if busy else ""
            text = f"{name}: {rate:,.0f} msg/s {cpu:.2f} us loadgen {loadgen:.0f}%{flag}"
            if base and name != first:
                text += f" ({rate / statistics.median(r for r, _, _ in base):.3f}x)"
            line.append(text)
        print("  ".join(line))


if __name__ == "__main__":
    main()
