"""Fan-out benchmark: one publisher, many subscribers, fastws against its peers.

    python bench/fanout/run.py [--quick] [--conns 1000 10000] [--sizes 32 1024] [--repeat 3]

Every server under test does the same thing: WebSocket connections to /sub are
subscribers, and every binary message received on /pub is sent to all of them:

- fastws: `server.publish` (encoded once, one write per socket per loop iteration);
- websockets 17 (asyncio): `websockets.broadcast(subscribers, message)`;
- picows (uvloop): a loop of `transport.send` over the subscribers;
- Node's ws 8 (bench/fanout/node, `npm install` there): a loop of `client.send`;
- fastws across 2 workers linked by Redis (`serve(workers=2, pubsub=...)`): the publisher
  lands on one worker, subscribers on both; every message goes through Redis.

The C load generator (bench/fanout/fanout.c) opens the subscribers and
the publisher, keeps `--inflight` messages in flight (a message is done when every
subscriber has it), checks that every subscriber gets every message once, in order, byte
for byte, and measures deliveries per second and publish-to-delivery latency. Servers are
pinned to CPU 0 (the two fastws workers and Redis too, so that row shows the cost of the
path through Redis, not a speed-up), the load generator to CPU 1. Runs are interleaved
across servers and repeated; medians are reported. Results go to bench/fanout/results.json
and to the fan-out section of bench/RESULTS.md (between its markers).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.dirname(HERE)
REPO = os.path.dirname(BENCH)
PY = sys.executable
SERVER_CPU, LOAD_CPU = 0, 1
# Two loads: "throughput" keeps 64 messages in flight (a saturated server: latency is then
# mostly queueing, Little's law); "latency" one at a time (the time one message takes to
# reach every subscriber).
LOADS = {"throughput": 64, "latency": 1}
BEGIN, END = "<!-- fanout:begin -->", "<!-- fanout:end -->"
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pin(cpu: int):
    return lambda: os.sched_setaffinity(0, {cpu})


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICK
        except OSError:
            pass
    return total


class Process:
    """A server (or Redis) under test, pinned to SERVER_CPU, listening on `port`."""

    def __init__(self, name: str, cmd: list[str], port: int, logdir: str,
                 cwd: str = REPO) -> None:
        self.name, self.port = name, port
        self.log = os.path.join(logdir, re.sub(r"\W+", "-", name) + ".log")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
                                         preexec_fn=pin(SERVER_CPU),
                                         env=dict(os.environ, PYTHONPATH=REPO))
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited at start; see {self.log}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not listen") from None
                time.sleep(0.05)
        time.sleep(0.5)      # every worker up, the backplane connected

    def pids(self) -> list[int]:
        return descendants(self.proc.pid)

    def stop(self) -> None:
        for pid in reversed(self.pids()):
            try:
                os.kill(pid, 15)
            except OSError:
                pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def servers(redis_port: int | None) -> list[dict]:
    fastws = [PY, f"{HERE}/servers/fastws_fanout.py", "--port"]
    specs = [
        {"name": "fastws", "cmd": lambda p: fastws + [str(p)]},
        {"name": "fastws.asyncio (uvloop)",
         "cmd": lambda p: [PY, f"{HERE}/servers/fastws_asyncio_fanout.py", "--port", str(p)]},
        {"name": "picows (uvloop)", "peer": True,
         "cmd": lambda p: [PY, f"{HERE}/servers/picows_fanout.py", "--port", str(p)]},
        {"name": "websockets (asyncio)", "peer": True,
         "cmd": lambda p: [PY, f"{HERE}/servers/websockets_fanout.py", "--port", str(p)]},
        {"name": "Node ws", "peer": True, "cwd": f"{HERE}/node",
         "cmd": lambda p: ["node", "ws_fanout.js", "--port", str(p)]},
    ]
    if redis_port is not None:
        specs.append({"name": "fastws, 2 workers + Redis", "redis": True,
                      "cmd": lambda p: fastws + [str(p), "--workers", "2", "--redis",
                                                 f"redis://127.0.0.1:{redis_port}/0"]})
    return specs


def run_loadgen(build: str, port: int, conns: int, size: int, inflight: int, duration: float,
                warmup: float) -> dict:
    cmd = [f"{build}/fanout", "--port", str(port), "--path", "/sub",
           "--pub-path", "/pub", "--conns", str(conns), "--inflight", str(inflight),
           "--size", str(size), "--duration", str(duration), "--warmup", str(warmup)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=pin(LOAD_CPU),
                           timeout=warmup + duration + 300)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": "loadgen timed out"}
    lines = [line for line in p.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"ok": False, "error": f"loadgen exit {p.returncode}: {p.stderr.strip()[-300:]}"}
    r = json.loads(lines[-1])
    if p.returncode != 0:
        r["ok"] = False
        r.setdefault("error", f"exit {p.returncode}: mismatches {r.get('mismatches')}, "
                              f"errors {r.get('errors')}, timed out {r.get('close_timeout')}")
    return r


def fmt(v: float) -> str:
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e3:
        return f"{v / 1e3:.0f}k"
    return f"{v:.0f}"


def fmt_us(v: float) -> str:
    return f"{v / 1000:.1f} ms" if v >= 1000 else f"{v:.0f} µs"


def report(args, runs: list[dict], started: str, load: list[float]) -> str:
    names = [s["name"] for s in servers(0)]
    L = [BEGIN, "## Fan-out: one publisher, many subscribers", "",
         f"Generated by `python bench/fanout/run.py {' '.join(args.argv)}` on {started}; "
         f"load average of the machine during the runs: {min(load):.2f}-{max(load):.2f} "
         "(2 cores, shared with other work).", "",
         "Each server sends every binary message received on /pub to every connection on "
         "/sub: fastws `server.publish`, websockets `broadcast`, picows (uvloop) a loop of "
         "`transport.send`, Node's ws a loop of `client.send`. The load generator "
         "(`bench/fanout/fanout.c`) keeps 64 messages in flight "
         "(\"throughput\") or one (\"latency\"); a message is done when every subscriber "
         "has it. It checks every "
         "delivery (once, in order, byte for byte) and measures publish-to-delivery latency "
         "over every delivery. Server on CPU 0 (the 2 workers and Redis too in the last row: "
         "the cost of the path through Redis, not a speed-up), load generator on CPU 1. "
         f"{args.warmup} s warm-up, {args.duration} s measured, {args.repeat} runs interleaved; "
         "medians (min-max). Server CPU µs/delivery: the server's (and in the last row "
         "Redis's, in parentheses) CPU time over the whole run, connecting included, divided "
         "by the deliveries.", ""]
    for load_name, conns, size in [(ln, c, z) for ln in args.loads for c in args.conns
                                   for z in args.sizes]:
        cell = [r for r in runs if r["conns"] == conns and r["size"] == size
                and r["load"] == load_name]
        if not cell:
            continue
        med = {}
        for n in names:
            vals = [r["deliveries_per_s"] for r in cell if r["server"] == n and r.get("ok")]
            if vals:
                med[n] = statistics.median(vals)
        L += [f"### {load_name} ({LOADS[load_name]} in flight): {conns:,} subscribers, "
              f"{size} B messages", "",
              "| server | deliveries/s median (min-max) | p50 / p99 latency | server CPU "
              "µs/delivery | fastws vs it |", "|---|---|---|---|---|"]
        for n in names:
            rs = [r for r in cell if r["server"] == n]
            if not rs:
                continue
            ok = [r for r in rs if r.get("ok")]
            if not ok:
                L.append(f"| {n} | FAILED: {rs[0].get('error')} | | | |")
                continue
            vals = [r["deliveries_per_s"] for r in ok]
            p50 = statistics.median(r["lat_p50_us"] for r in ok)
            p99 = statistics.median(r["lat_p99_us"] for r in ok)
            cpu = statistics.median(r["server_cpu_us"] for r in ok)
            extra = ""
            if "redis_cpu_us" in ok[0]:
                extra = f" (Redis {statistics.median(r['redis_cpu_us'] for r in ok):.3f})"
            ratio = (f"{med['fastws'] / med[n]:.2f}x" if n != "fastws" and "fastws" in med
                     and n in med else "")
            failed = f" ({len(rs) - len(ok)} failed)" if len(ok) < len(rs) else ""
            L.append(f"| {n} | {fmt(med[n])} ({fmt(min(vals))}-{fmt(max(vals))}){failed} | "
                     f"{fmt_us(p50)} / {fmt_us(p99)} | {cpu:.2f}{extra} | {ratio} |")
        L.append("")
    problems = [f"{r['server']} {r['conns']} x {r['size']} B: {r.get('error')}"
                for r in runs if not r.get("ok")]
    L += ["Problems seen: " + ("; ".join(problems) if problems else "none"), "", END]
    return "\n".join(L)


def write_section(path: str, section: str) -> None:
    text = ""
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    with open(path, "w") as f:
        f.write(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1,000 subscribers, 32 B, 1 run")
    ap.add_argument("--conns", type=int, nargs="+")
    ap.add_argument("--sizes", type=int, nargs="+")
    ap.add_argument("--repeat", type=int)
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--only", nargs="+", help="server names to run (default: all)")
    ap.add_argument("--no-redis", action="store_true")
    ap.add_argument("--loads", nargs="+", choices=sorted(LOADS), default=list(LOADS))
    ap.add_argument("--output", default=os.path.join(BENCH, "RESULTS.md"))
    args = ap.parse_args()
    args.argv = sys.argv[1:]
    args.conns = args.conns or ([1000] if args.quick else [1000, 10000])
    args.sizes = args.sizes or ([32] if args.quick else [32, 1024])
    args.repeat = args.repeat or (1 if args.quick else 3)
    # 10,000 subscribers: the load generator and each server need that many descriptors
    # (children inherit the limit; the load generator raises its own to the hard limit).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(args.conns) * 2 + 1024
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    if not os.path.isdir(f"{HERE}/node/node_modules/ws"):
        subprocess.run(["npm", "install", "--no-audit", "--no-fund"], cwd=f"{HERE}/node",
                       check=True)
    build = tempfile.mkdtemp(prefix="fastws-fanout-")
    subprocess.run(["cc", "-O2", "-I", f"{BENCH}/echo", "-o", f"{build}/fanout",
                    f"{HERE}/fanout.c"], check=True)
    redis = None
    if not args.no_redis and shutil.which("redis-server"):
        redis_port = free_port()
        redis = Process("redis", ["redis-server", "--port", str(redis_port), "--bind",
                                  "127.0.0.1", "--save", "", "--appendonly", "no"],
                        redis_port, build)
    specs = [s for s in servers(redis.port if redis else None)
             if not args.only or s["name"] in args.only]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    live = []
    runs: list[dict] = []
    load: list[float] = []
    try:
        for spec in specs:
            port = free_port()
            live.append((spec, Process(spec["name"], spec["cmd"](port), port, build,
                                       spec.get("cwd", REPO))))
        cells = [(load_name, conns, size) for load_name in args.loads for conns in args.conns
                 for size in args.sizes]
        for load_name, conns, size in cells:
            for rep in range(args.repeat):
                for spec, server in live:
                    load.append(os.getloadavg()[0])
                    pids = server.pids()
                    cpu0 = cpu_seconds(pids)
                    rcpu0 = cpu_seconds(redis.pids()) if redis and spec.get("redis") else 0
                    r = run_loadgen(build, server.port, conns, size, LOADS[load_name],
                                    args.duration, args.warmup)
                    deliveries = max(1, r.get("total_deliveries") or 0)
                    r["server_cpu_us"] = (cpu_seconds(pids) - cpu0) / deliveries * 1e6
                    if redis and spec.get("redis"):
                        r["redis_cpu_us"] = ((cpu_seconds(redis.pids()) - rcpu0)
                                             / deliveries * 1e6)
                    r.update(server=spec["name"], conns=conns, size=size, load=load_name)
                    runs.append(r)
                    print(f"{load_name:>10} {conns:>6} x {size:>5} B #{rep} "
                          f"{spec['name']:<26} "
                          f"{r.get('deliveries_per_s', 0):>12,.0f} deliveries/s  "
                          f"p99 {r.get('lat_p99_us', 0):>9,.0f} us  "
                          f"{'ok' if r.get('ok') else 'FAIL ' + str(r.get('error'))}",
                          flush=True)
                    if server.proc.poll() is not None:
                        raise RuntimeError(f"{spec['name']} died; see {server.log}")
    finally:
        for _, server in live:
            server.stop()
        if redis is not None:
            redis.stop()
    default_out = os.path.abspath(args.output) == os.path.join(BENCH, "RESULTS.md")
    raw_path = (os.path.join(HERE, "results.json") if default_out
                else os.path.splitext(args.output)[0] + ".json")
    with open(raw_path, "w") as f:
        json.dump({"argv": args.argv, "started": started, "load": load, "runs": runs}, f,
                  indent=1)
    write_section(args.output, report(args, runs, started, load))
    print(f"wrote {args.output} and {raw_path}; logs in {build}")


if __name__ == "__main__":
    main()
