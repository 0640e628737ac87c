"""Instructions per message of the fastws echo server, counted by callgrind: a figure that the
load of a shared machine does not change (wall-clock rates and even CPU time do).

    python bench/echo/instructions.py --tree before=/path/to/old/checkout --tree after=. \\
        [--cells 1x1x32 1x16x32 100x16x32 1x16x65536] [--messages 2000]

For each tree (its extensions built in place) and cell (connections x messages in flight x
size), the server runs twice under `valgrind --tool=callgrind` with busy polling off, driven
by the C load generator with `--count N` and `--count 2N` messages per connection; the
difference of the two totals over the N extra messages per connection is the cost of a
message, start-up and shutdown cancelled out. Under callgrind the server is slow, so reads
carry more frames than at full speed: compare trees with it, not absolute costs.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import run  # noqa: E402  (bench/echo/run.py: the load generator and helpers)


def total_instructions(tree: str, build: str, conns: int, inflight: int, size: int,
                       count: int) -> int:
    port = run.free_port()
    out = os.path.join(build, f"callgrind.{os.getpid()}.{port}")
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
           run.PY, "-m", "fastws", "echo", "--port", str(port), "--no-compression",
           "--busy-poll", "0", "--max-message-size", str(64 << 20)]
    env = dict(os.environ, PYTHONPATH=tree)
    server = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                run.socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"the server in {tree} did not start") from None
                time.sleep(0.2)
        result = subprocess.run(
            [f"{build}/loadgen", "--port", str(port), "--mode", "ws", "--conns", str(conns),
             "--inflight", str(inflight), "--size", str(size), "--count", str(count)],
            capture_output=True, text=True, timeout=1200)
        if result.returncode != 0:
            raise RuntimeError(f"loadgen failed: {result.stdout[-300:]} {result.stderr[-300:]}")
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(900)           # valgrind is slow to wind down on a busy machine
    with open(out) as dump:
        totals = re.search(r"^totals:\s+(\d+)", dump.read(), re.MULTILINE)
    os.unlink(out)
    assert totals is not None, "no totals line in the callgrind output"
    return int(totals.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("--cells", nargs="+", default=["1x1x32", "1x16x32", "100x16x32",
                                                        "1x16x65536"])
    parser.add_argument("--messages", type=int, default=2000,
                        help="N: messages per connection of the shorter run")
    args = parser.parse_args()
    build = tempfile.mkdtemp(prefix="fastws-ir-")
    run.build_c(build)
    trees = [entry.split("=", 1) for entry in args.tree]
    print(f"instructions per message (callgrind, busy poll off, N={args.messages})")
    for cell in args.cells:
        conns, inflight, size = (int(part) for part in cell.lower().split("x"))
        count = max(inflight, args.messages // max(1, conns // 10))
        line = [f"{cell:>14}"]
        first: float | None = None
        for name, path in trees:
            path = os.path.abspath(path)
            short = total_instructions(path, build, conns, inflight, size, count)
            long = total_instructions(path, build, conns, inflight, size, 2 * count)
            per_message = (long - short) / (count * conns)
            ratio = "" if first is None else f" ({per_message / first:.3f}x)"
            first = per_message if first is None else first
            line.append(f"{name}: {per_message:,.0f}{ratio}")
        print("  ".join(line), flush=True)


if __name__ == "__main__":
    main()
