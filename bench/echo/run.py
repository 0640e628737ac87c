"""Side-by-side echo benchmark of fastws and its Python peers, servers and clients.

    python bench/echo/run.py [--quick] [--sizes 32 4096 ...] [--repeat N] [--duration S]
                             [--placement cross|same]

Compiles the C load generator (loadgen.c) and raw echo server (rawecho.c) with the system
`cc -O2` into a temporary directory, starts every server under test in its own process pinned to
CPU 0, and drives it with the load generator pinned to CPU 1. Runs are interleaved across servers
(A B C A B C for each cell) and repeated; medians and min-max are reported. Writes
bench/RESULTS.md and the raw runs to bench/echo/results.json (next to --output when that is
given). `--placement same` pins the load generator to CPU 0 too (total CPU per message, what a
busy host sees) and writes bench/RESULTS-same-core.md and bench/echo/results-same-core.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PY = sys.executable
SERVER_CPU = 0
LOAD_CPU = 1   # 0 with --placement same
LOADGEN_BUSY_PCT = 90   # above this share of its core, a cell measures the load generator too

SIZES = [32, 256, 4096, 65536, 1048576]
SCENARIOS = [  # name, connections, messages in flight per connection
    ("ping-pong", 1, 1),
    ("pipelined", 1, 16),
    ("100 connections", 100, 16),
    # Several connections each waiting for its echo: large messages here are where a
    # payload's memory comes and goes per message (fastws/_codec.pyx, spare payloads).
    ("16 connections", 16, 1),
]
CLIENT_SCENARIOS = SCENARIOS[:2]
# The clients run against each of these servers in turn: the fastest one, so that the client is
# what limits the run, and picows, so that no client is measured only against its own server.
CLIENT_SERVERS = ["fastws", "picows (uvloop)"]


def human_size(n: int) -> str:
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20} MiB"
    if n >= 1024 and n % 1024 == 0:
        return f"{n >> 10} KiB"
    return f"{n} B"


# --------------------------------------------------------------------------- servers under test

def servers(build: str) -> list[dict]:
    fastws_cmd = [PY, "-m", "fastws", "echo", "--host", "127.0.0.1", "--no-compression",
                  "--max-message-size", str(64 << 20)]

    def python_server(script: str, *options: str):
        return lambda p: [PY, f"{HERE}/servers/{script}", "--port", str(p), *options]

    def uvicorn_server(ws: str):
        # The same FastAPI app, the same uvicorn (uvloop, httptools); only --ws differs.
        return lambda p: [PY, "-m", "uvicorn", "fastapi_echo:app", "--app-dir",
                          f"{HERE}/servers", "--host", "127.0.0.1", "--port", str(p),
                          "--ws", ws, "--loop", "uvloop", "--http", "httptools",
                          "--ws-per-message-deflate", "false", "--ws-max-size",
                          str(64 << 20), "--log-level", "warning", "--no-access-log"]

    return [
        {"name": "fastws", "cmd": lambda p: fastws_cmd + ["--port", str(p)], "memory": True},
        {"name": "fastws (busy-poll off)",
         "cmd": lambda p: fastws_cmd + ["--port", str(p), "--busy-poll", "0"], "memory": False},
        {"name": "fastws (2 workers)",
         "cmd": lambda p: fastws_cmd + ["--port", str(p), "--workers", "2"], "memory": False},
        {"name": "fastws callbacks (uvloop)", "log": "fastws-asyncio-callbacks",
         "cmd": python_server("fastws_asyncio_echo.py", "--uvloop"), "memory": True},
        {"name": "fastws awaitable (uvloop)", "log": "fastws-asyncio-awaitable",
         "cmd": python_server("fastws_asyncio_echo.py", "--uvloop", "--awaitable"),
         "memory": True},
        {"name": "fastws callbacks (uvloop, asyncio I/O)", "log": "fastws-asyncio-transports",
         "cmd": python_server("fastws_asyncio_echo.py", "--uvloop", "--transport", "asyncio"),
         "memory": False, "opt_in": True},
        {"name": "uvicorn+FastAPI, --ws fastws", "log": "uvicorn-fastws",
         "cmd": uvicorn_server("fastws.uvicorn:WebSocketProtocol"), "memory": True},
        {"name": "uvicorn+FastAPI, --ws websockets-sansio", "log": "uvicorn-websockets-sansio",
         "cmd": uvicorn_server("websockets-sansio"), "memory": True, "peer": True},
        {"name": "picows (asyncio)", "cmd": python_server("picows_echo.py"),
         "memory": True, "peer": True},
        {"name": "picows (uvloop)", "cmd": python_server("picows_echo.py", "--uvloop"),
         "memory": True, "peer": True},
        {"name": "websockets", "cmd": python_server("websockets_echo.py"),
         "memory": True, "peer": True},
        {"name": "aiohttp", "cmd": python_server("aiohttp_echo.py"),
         "memory": True, "peer": True},
        {"name": "raw C (TCP, no WebSocket)", "cmd": lambda p: [f"{build}/rawecho", str(p)],
         "raw": True, "memory": False},
    ]


def python_path() -> str:
    """This tree's fastws first, whatever fastws is installed: the servers and clients run
    from bench/echo/, where `import fastws` would otherwise find the installed one."""
    return os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pin(cpu: int):
    def pre() -> None:
        os.sched_setaffinity(0, {cpu})
    return pre


class Server:
    def __init__(self, spec: dict, logdir: str):
        self.spec = spec
        self.logdir = logdir
        self.proc: subprocess.Popen | None = None
        self.crashes: list[str] = []
        self.start()

    def start(self) -> None:
        self.port = free_port()
        full_name = self.spec["name"]
        name = full_name.split()[0]
        suffixes = {"2 workers": "-2w", "uvloop": "-uvloop", "asyncio": "-asyncio"}
        for marker, suffix in suffixes.items():
            if marker in full_name:
                name += suffix
        name = self.spec.get("log", name)
        self.log_path = os.path.join(self.logdir, f"{name}.log")
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=python_path())
        # The child gets its own copy of the log's descriptor; ours can close at once.
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.spec["cmd"](self.port), stdout=log,
                                         stderr=subprocess.STDOUT, preexec_fn=pin(SERVER_CPU),
                                         cwd=REPO, env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.spec['name']} exited at start; see {self.log_path}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError(f"{self.spec['name']} did not listen on {self.port}")
        time.sleep(0.3)  # let multi-process servers bring up every worker

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ensure(self, note: str) -> None:
        if not self.alive():
            self.crashes.append(f"exited with {self.proc.returncode} {note}")
            print(f"  !! {self.spec['name']} died ({note}); restarting", flush=True)
            self.start()

    def stop(self) -> None:
        if self.alive():
            for pid in descendants(self.proc.pid)[1:]:
                try:
                    os.kill(pid, 15)
                except OSError:
                    pass
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --------------------------------------------------------------------------- /proc

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


TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    total = 0.0
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICK   # utime, stime
        except OSError:
            pass
    return total


def rss_kib(pid: int) -> int:
    total = 0
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


# --------------------------------------------------------------------------- load generator

def run_loadgen(build: str, port: int, mode: str, conns: int, inflight: int, size: int,
                duration: float, warmup: float) -> dict:
    cmd = [f"{build}/loadgen", "--port", str(port), "--mode", mode, "--conns", str(conns),
           "--inflight", str(inflight), "--size", str(size), "--duration", str(duration),
           "--warmup", str(warmup)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=pin(LOAD_CPU),
                           timeout=warmup + duration + 60)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": "loadgen timed out"}
    lines = [line for line in p.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"ok": False, "error": f"loadgen exit {p.returncode}: {p.stderr.strip()[-300:]}"}
    r = json.loads(lines[-1])
    if p.returncode != 0:
        r["ok"] = False
        r.setdefault("error", f"loadgen exit {p.returncode} (mismatches {r.get('mismatches')}, "
                              f"errors {r.get('errors')}) {p.stderr.strip()[-300:]}")
    return r


def measure_server(build: str, server: Server, scenario: tuple, size: int, duration: float,
                   warmup: float) -> dict:
    name, conns, inflight = scenario
    mode = "raw" if server.spec.get("raw") else "ws"
    cpu0 = cpu_seconds(server.proc.pid)
    r = run_loadgen(build, server.port, mode, conns, inflight, size, duration, warmup)
    cpu1 = cpu_seconds(server.proc.pid)
    total = r.get("total_messages") or 0
    r["server_cpu_s"] = cpu1 - cpu0
    r["server_cpu_us_per_msg"] = (cpu1 - cpu0) / total * 1e6 if total else None
    r.update(server=server.spec["name"], scenario=name, size=size)
    server.ensure(f"after {name} {human_size(size)}")
    return r


def measure_idle_memory(build: str, spec: dict, logdir: str, n: int) -> dict:
    server = Server(spec, logdir)
    try:
        # one short busy run first, so lazily built state is in the baseline
        run_loadgen(build, server.port, "ws", 10, 1, 32, 0.3, 0.1)
        time.sleep(0.5)
        before = rss_kib(server.proc.pid)
        p = subprocess.Popen([f"{build}/loadgen", "--port", str(server.port), "--mode", "idle",
                              "--conns", str(n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, preexec_fn=pin(LOAD_CPU))
        line = p.stdout.readline()
        ready = line.startswith("{") and json.loads(line).get("ready")
        time.sleep(1.0)
        after = rss_kib(server.proc.pid)
        alive = server.alive()
        p.stdin.close()
        p.wait(30)
        if not ready:
            return {"server": spec["name"], "ok": False,
                    "error": (line + p.stderr.read()).strip()[-300:]}
        return {"server": spec["name"], "ok": alive, "conns": n, "rss_before_kib": before,
                "rss_after_kib": after, "kib_per_conn": (after - before) / n,
                "connect_s": json.loads(line).get("connect_s")}
    finally:
        server.stop()


# --------------------------------------------------------------------------- clients

CLIENTS = ["C loadgen", "fastws", "fastws_asyncio", "picows", "websockets"]


def run_client(build: str, client: str, port: int, scenario: tuple, size: int, duration: float,
               warmup: float) -> dict:
    name, conns, inflight = scenario
    if client == "C loadgen":
        r = run_loadgen(build, port, "ws", conns, inflight, size, duration, warmup)
        r["client_cpu_us_per_msg"] = r.get("cpu_us_per_msg")
    else:
        cmd = [PY, f"{HERE}/clients/{client}_client.py", "--url", f"ws://127.0.0.1:{port}/",
               "--size", str(size), "--inflight", str(inflight), "--duration", str(duration),
               "--warmup", str(warmup)]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=pin(LOAD_CPU),
                               timeout=warmup + duration + 60, cwd=f"{HERE}/clients",
                               env=dict(os.environ, PYTHONPATH=python_path()))
            lines = [line for line in p.stdout.splitlines() if line.startswith("{")]
            if lines:
                r = json.loads(lines[-1])
                r["client_cpu_us_per_msg"] = r.get("cpu_us_per_msg")
                if p.returncode != 0:
                    r["ok"] = False
                    r["error"] = f"exit {p.returncode}: {p.stderr.strip()[-300:]}"
            else:
                r = {"ok": False, "error": f"exit {p.returncode}: {p.stderr.strip()[-300:]}"}
        except subprocess.TimeoutExpired:
            r = {"ok": False, "error": "client timed out"}
    r.update(client=client, scenario=name, size=size)
    return r


# --------------------------------------------------------------------------- report

def summary(values: list[float]) -> tuple[float, float, float] | None:
    if not values:
        return None
    return statistics.median(values), min(values), max(values)


def fmt_rate(v: float) -> str:
    if v >= 100_000:
        return f"{v / 1000:,.0f}k"
    if v >= 10_000:
        return f"{v / 1000:,.1f}k"
    return f"{v:,.0f}"


def fmt_us(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if v >= 100 else f"{v:.2f}" if v < 10 else f"{v:.1f}"


def machine() -> list[str]:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cc = subprocess.run(["cc", "--version"], capture_output=True, text=True).stdout.splitlines()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    return [f"- CPU: {model}, {os.cpu_count()} logical cores; {mem:.0f} GiB RAM",
            f"- Kernel: {platform.system()} {platform.release()}",
            f"- Compiler for loadgen/rawecho: {cc[0] if cc else '?'} (-O2)"]


def versions() -> str:
    out = [f"Python {platform.python_version()}"]
    for dist in ("fastws", "picows", "websockets", "aiohttp", "uvloop", "Cython"):
        try:
            out.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            out.append(f"{dist} (not installed)")
    return ", ".join(out)


def report(args, server_runs, memory, client_runs, problems, started, elapsed) -> str:
    same_core = LOAD_CPU == SERVER_CPU
    L = ["# Echo benchmark results", "",
         f"Generated by `{' '.join(['python bench/echo/run.py'] + args.argv)}` on {started} "
         f"({elapsed / 60:.1f} min).", ""]
    L += machine()
    L += [f"- Versions: {versions()}", ""]
    L += ["## Method", "",
          "- One load generator for every server: `bench/echo/loadgen.c` (epoll, its own "
          "handshake with Sec-WebSocket-Accept check, frames masked with random keys, every "
          "echoed message compared byte for byte; a mismatch fails the run). Binary messages; "
          "compression off everywhere.",
          f"- Placement `{getattr(args, 'placement', 'cross')}`: server pinned to CPU "
          f"{SERVER_CPU}, load generator / client pinned to CPU {LOAD_CPU}"
          f"{' (the same core: rates show total CPU per message)' if same_core else ''}. "
          "`fastws (2 workers)` is pinned to CPU 0 too (both workers share it), so it shows the "
          "cost of the multi-process mode, not a speed-up.",
          "- `fastws` runs with its defaults: after I/O its loop polls for up to 25 µs for the "
          "next event before it sleeps (adaptive; docs/performance.md). `fastws (busy-poll off)` "
          "is the same server with `--busy-poll 0`: it sleeps at once, as the peers do. Server "
          "CPU includes the polling.",
          f"- Each run: {args.warmup} s warm-up, then {args.duration} s measured; {args.repeat} "
          "repeat(s), interleaved across servers (A B C A B C per cell). Numbers: median (min-max) "
          "over repeats.",
          "- Server CPU µs/msg: utime+stime of the server process tree from /proc/PID/stat (10 ms "
          "ticks) over the whole load-generator run, divided by every message echoed in it "
          "(warm-up included).",
          "- vs best peer: median msgs/s divided by the best of picows (asyncio), picows (uvloop), "
          "websockets and aiohttp in the same cell; vs raw C: divided by the raw TCP echo "
          "(`rawecho.c`, same byte count per message, no framing) in the same cell.",
          "- server CPU %: server CPU µs/msg x msgs/s (near 100: the server's CPU is the limit). "
          "loadgen CPU %: the load generator's own CPU time over the measured window (near 100: "
          f"the load generator is the limit; flagged ⚠ above {LOADGEN_BUSY_PCT} in the cross-core "
          "placement). With both well below 100 the cell is bound by "
          "wake-up latency between the two CPUs (ping-pong, and pipelined runs whose batches stay "
          "small); the raw C server is then not a ceiling for the WebSocket servers, because a "
          "slower server lets bigger batches build up.",
          "- Ping-pong latency: p50/p99 of each round trip, measured by the load generator "
          "(median over repeats).",
          ""]
    names = [s["name"] for s in servers("")]
    peers = [s["name"] for s in servers("") if s.get("peer")]
    raw_name = next(s["name"] for s in servers("") if s.get("raw"))
    L += ["## Servers", ""]
    for scen in SCENARIOS:
        sname, conns, inflight = scen
        L += [f"### {sname}: {conns} connection{'s' if conns > 1 else ''}, {inflight} message"
              f"{'s' if inflight > 1 else ''} in flight{' each' if conns > 1 else ''}", ""]
        for size in args.sizes:
            cell = [r for r in server_runs if r["scenario"] == sname and r["size"] == size]
            if not cell:
                continue
            med = {}
            for n in names:
                vals = [r["msgs_per_s"] for r in cell if r["server"] == n and r.get("ok")]
                if vals:
                    med[n] = statistics.median(vals)
            best_peer = max((med[n] for n in peers if n in med), default=None)
            raw = med.get(raw_name)
            L += [f"#### {sname}, {human_size(size)}", ""]
            head = ("| server | msgs/s median (min-max) | server CPU µs/msg | server CPU % "
                    "| loadgen CPU % | vs best peer | vs raw C |")
            sep = "|---|---|---|---|---|---|---|"
            if inflight == 1:
                head += " p50 / p99 µs |"
                sep += "---|"
            L += [head, sep]
            for n in names:
                runs = [r for r in cell if r["server"] == n]
                if not runs:
                    continue
                okruns = [r for r in runs if r.get("ok")]
                s = summary([r["msgs_per_s"] for r in okruns])
                failed = len(runs) - len(okruns)
                rate = ("FAILED" if s is None
                        else f"{fmt_rate(s[0])} ({fmt_rate(s[1])}-{fmt_rate(s[2])})")
                if failed and s is not None:
                    rate += f" ({failed} failed)"
                cpu = summary([r["server_cpu_us_per_msg"] for r in okruns
                               if r.get("server_cpu_us_per_msg")])
                vs_peer = f"{s[0] / best_peer:.2f}x" if s and best_peer else "-"
                vs_raw = f"{s[0] / raw:.2f}x" if s and raw else "-"
                busy = f"{cpu[0] * s[0] / 1e4:.0f}" if cpu and s else "-"
                lg = summary([r["cpu_pct"] for r in okruns if r.get("cpu_pct") is not None])
                lg_busy = lg and lg[0] > LOADGEN_BUSY_PCT and not same_core
                row = (f"| {n} | {rate} | {fmt_us(cpu[0]) if cpu else '-'} | {busy} | "
                       f"{f'{lg[0]:.0f}' if lg else '-'}{' ⚠' if lg_busy else ''} | {vs_peer} "
                       f"| {vs_raw} |")
                if inflight == 1:
                    p50 = summary([r["lat_p50_us"] for r in okruns])
                    p99 = summary([r["lat_p99_us"] for r in okruns])
                    p50_us = fmt_us(p50[0]) if p50 else "-"
                    p99_us = fmt_us(p99[0]) if p99 else "-"
                    row += f" {p50_us} / {p99_us} |"
                L.append(row)
            L.append("")
    if memory:
        L += ["## Idle memory per connection", "",
              f"{memory[0].get('conns', 2000)} idle WebSocket connections opened (handshake done, "
              "no messages) after a short warm-up run; (VmRSS after - VmRSS before) / connections, "
              "server process tree.", "",
              "| server | KiB per connection | RSS before (MiB) | RSS after (MiB) |",
              "|---|---|---|---|"]
        for m in memory:
            if m.get("ok"):
                L.append(f"| {m['server']} | {m['kib_per_conn']:.1f} | "
                         f"{m['rss_before_kib'] / 1024:.1f} | {m['rss_after_kib'] / 1024:.1f} |")
            else:
                L.append(f"| {m['server']} | FAILED: {m.get('error', 'server died')} | | |")
        L.append("")
    if client_runs:
        L += ["## Clients", "",
              "Each client against the same server, pinned to CPU 0: first fastws (the fastest "
              "server here, so that the client is the limit), then picows on uvloop. Client pinned "
              "to CPU 1. Python clients keep the messages in flight from their "
              "callbacks/coroutines and compare every echo with what they sent. Client CPU µs/msg: "
              "the client's own "
              "process CPU time (`time.process_time`, CLOCK_PROCESS_CPUTIME_ID in C) over the "
              "measured window / messages. The C loadgen row is the reference for what the server "
              "can take.", ""]
        for against, scen in [(a, sc) for a in CLIENT_SERVERS for sc in CLIENT_SCENARIOS]:
            sname, conns, inflight = scen
            runs_here = [r for r in client_runs if r.get("against", "picows (uvloop)") == against]
            if not runs_here:
                continue
            L += [f"### {sname} ({inflight} in flight), against the {against} server", "",
                  "| client | " + " | ".join(human_size(s) for s in args.sizes) + " |",
                  "|---|" + "---|" * len(args.sizes)]
            for c in CLIENTS:
                if not any(r["client"] == c for r in runs_here):
                    continue
                cells = []
                for size in args.sizes:
                    runs = [r for r in runs_here if r["client"] == c and r["scenario"] == sname
                            and r["size"] == size]
                    okruns = [r for r in runs if r.get("ok")]
                    s = summary([r["msgs_per_s"] for r in okruns])
                    if not runs:
                        cells.append("")
                    elif s is None:
                        cells.append("FAILED")
                    else:
                        cpu = summary([r["client_cpu_us_per_msg"] for r in okruns
                                       if r.get("client_cpu_us_per_msg")])
                        txt = f"{fmt_rate(s[0])} ({fmt_rate(s[1])}-{fmt_rate(s[2])})"
                        if cpu:
                            txt += f"<br>{fmt_us(cpu[0])} µs CPU/msg"
                        if inflight == 1:
                            p50 = summary([r["lat_p50_us"] for r in okruns if r.get("lat_p50_us")])
                            if p50:
                                txt += f"<br>p50 {fmt_us(p50[0])} µs"
                        cells.append(txt)
                L.append(f"| {c} | " + " | ".join(cells) + " |")
            note = "msgs/s (round trips/s for ping-pong), median (min-max)."
            L += ["", note if sname == "ping-pong" else "", ""]
    L += ["## Problems seen", ""]
    L += [f"- {p}" for p in problems] or ["- none"]
    L.append("")
    return "\n".join(L)


# --------------------------------------------------------------------------- main

def selected(specs: list[dict], words: list[str] | None) -> list[dict]:
    """The servers named by `words` (parts of their names); without words, all but the
    experiments ("opt_in"), which run only when named."""
    if not words:
        return [s for s in specs if not s.get("opt_in")]
    return [s for s in specs if any(w.lower() in s["name"].lower() for w in words)]

def kept_sections(path: str) -> str:
    """Sections other benchmarks keep in the same file (bench/fanout/run.py's, between its
    markers), carried over when this report rewrites it."""
    try:
        with open(path) as f:
            old = f.read()
    except OSError:
        return ""
    begin, end = "<!-- fanout:begin -->", "<!-- fanout:end -->"
    if begin in old and end in old:
        return "\n" + old[old.index(begin):old.index(end) + len(end)] + "\n"
    return ""


def outcome(run: dict) -> str:
    return "ok" if run.get("ok") else f"FAIL {run.get('error')}"


def build_c(build: str) -> None:
    if not shutil.which("cc"):
        sys.exit("cc not found: the load generator and raw echo server need a C compiler")
    for prog in ("loadgen", "rawecho"):
        subprocess.run(["cc", "-O2", "-pthread", "-o", f"{build}/{prog}", f"{HERE}/{prog}.c"],
                       check=True)


def place(placement: str) -> None:
    """Pin the load generator and clients to CPU 1 (cross) or to the server's CPU (same)."""
    global LOAD_CPU
    LOAD_CPU = SERVER_CPU if placement == "same" else 1


def raise_nofile(n: int = 65536) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(max(soft, n), hard) if hard != resource.RLIM_INFINITY else max(soft, n)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="sizes 32 B and 64 KiB, 1 repeat, 1 s runs")
    ap.add_argument("--sizes", type=int, nargs="+")
    ap.add_argument("--repeat", type=int)
    ap.add_argument("--duration", type=float)
    ap.add_argument("--warmup", type=float)
    ap.add_argument("--idle-conns", type=int, default=2000)
    ap.add_argument("--only", nargs="+", choices=["servers", "memory", "clients"],
                    default=["servers", "memory", "clients"])
    ap.add_argument("--servers", nargs="+", metavar="NAME",
                    help="run only the servers whose names contain one of these words")
    ap.add_argument("--clients", nargs="+", metavar="NAME", choices=CLIENTS,
                    help="run only these clients")
    ap.add_argument("--scenarios", nargs="+", choices=[s[0] for s in SCENARIOS],
                    help="run only these scenarios")
    ap.add_argument("--placement", choices=["cross", "same"], default="cross",
                    help="load generator on CPU 1 (cross, default) or on the server's CPU 0 (same)")
    ap.add_argument("--output", help="default: bench/RESULTS.md, bench/RESULTS-same-core.md "
                                     "with --placement same")
    ap.add_argument("--from-json", metavar="FILE",
                    help="only rewrite the report from a saved results.json")
    args = ap.parse_args()
    same = args.placement == "same"
    default_out = os.path.join(REPO, "bench", "RESULTS-same-core.md" if same else "RESULTS.md")
    args.output = args.output or default_out
    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        old = argparse.Namespace(**saved["args"])
        old.argv = saved.get("argv", [])
        place(getattr(old, "placement", "cross"))
        text = report(old, saved["servers"], saved["memory"], saved["clients"], saved["problems"],
                      saved["started"], saved.get("elapsed", 0))
        with open(args.output, "w") as f:
            f.write(text)
        print(f"wrote {args.output}")
        return
    args.argv = sys.argv[1:]
    args.sizes = args.sizes or ([32, 65536] if args.quick else SIZES)
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.duration = args.duration or (1.0 if args.quick else 2.0)
    args.warmup = args.warmup if args.warmup is not None else (0.3 if args.quick else 0.5)
    if (os.cpu_count() or 1) < 2:
        sys.exit("needs at least 2 CPUs (server on CPU 0, load generator on CPU 1)")
    place(args.placement)
    raise_nofile()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    t_start = time.monotonic()
    build = tempfile.mkdtemp(prefix="fastws-echo-")
    build_c(build)
    print(f"built loadgen and rawecho in {build}", flush=True)
    server_runs, memory, client_runs, problems = [], [], [], []

    def note_problems(runs, who_key):
        for r in runs:
            if not r.get("ok"):
                error = (r.get("error")
                         or f"mismatches {r.get('mismatches')}, errors {r.get('errors')}")
                where = f"{r.get(who_key)} {r['scenario']} {human_size(r['size'])}"
                problems.append(f"{where}: {error}")
            elif r.get("close_timeout"):
                problems.append(f"{r.get(who_key)} {r['scenario']} {human_size(r['size'])}: "
                                "closing handshake or drain timed out")

    if "servers" in args.only:
        live = [Server(spec, build) for spec in selected(servers(build), args.servers)]
        try:
            for scen in [s for s in SCENARIOS if not args.scenarios or s[0] in args.scenarios]:
                for size in args.sizes:
                    for rep in range(args.repeat):
                        for server in live:
                            r = measure_server(build, server, scen, size, args.duration,
                                               args.warmup)
                            server_runs.append(r)
                            print(f"{scen[0]:>15} {human_size(size):>7} #{rep} "
                                  f"{server.spec['name']:<26} "
                                  f"{r.get('msgs_per_s', 0):>12,.0f} msg/s  cpu "
                                  f"{fmt_us(r.get('server_cpu_us_per_msg'))} us/msg  "
                                  f"{outcome(r)}", flush=True)
        finally:
            for server in live:
                problems += [f"{server.spec['name']} {c}" for c in server.crashes]
                server.stop()
        note_problems(server_runs, "server")

    if "memory" in args.only:
        for spec in selected(servers(build), args.servers):
            if spec.get("memory"):
                m = measure_idle_memory(build, spec, build, args.idle_conns)
                memory.append(m)
                print(f"idle memory {spec['name']:<20} "
                      f"{m.get('kib_per_conn', float('nan')):.1f} KiB/conn "
                      f"{'' if m.get('ok') else m.get('error')}", flush=True)
                if not m.get("ok"):
                    problems.append(f"{spec['name']} idle memory: {m.get('error', 'server died')}")

    if "clients" in args.only:
        for against in CLIENT_SERVERS:
            spec = next(s for s in servers(build) if s["name"] == against)
            server = Server(spec, build)
            try:
                for scen in CLIENT_SCENARIOS:
                    for size in args.sizes:
                        for rep in range(args.repeat):
                            for client in args.clients or CLIENTS:
                                r = run_client(build, client, server.port, scen, size,
                                               args.duration, args.warmup)
                                r["against"] = against
                                client_runs.append(r)
                                print(f"client vs {against:<15} {scen[0]:>10} "
                                      f"{human_size(size):>7} #{rep} {client:<11} "
                                      f"{r.get('msgs_per_s', 0):>12,.0f} msg/s  cpu "
                                      f"{fmt_us(r.get('client_cpu_us_per_msg'))} us/msg  "
                                      f"{outcome(r)}", flush=True)
                                server.ensure(f"after client {client} {scen[0]} {human_size(size)}")
            finally:
                problems += [f"client-side server {against} {c}" for c in server.crashes]
                server.stop()
        note_problems(client_runs, "client")

    # server logs: anything that looks like a traceback or error is a problem worth reporting
    for log in sorted(os.listdir(build)):
        if log.endswith(".log"):
            with open(os.path.join(build, log), errors="replace") as f:
                text = f.read()
            bad = [line for line in text.splitlines()
                   if any(w in line for w in ("Traceback", "Error", "error", "Exception"))]
            if bad:
                problems.append(f"{log}: {len(bad)} error line(s) in the server log, "
                                f"first: {bad[0].strip()[:200]}")

    elapsed = time.monotonic() - t_start
    raw_path = (os.path.join(HERE, "results-same-core.json" if same else "results.json")
                if os.path.abspath(args.output) == default_out
                else os.path.splitext(args.output)[0] + ".json")
    with open(raw_path, "w") as f:
        json.dump({"args": {k: v for k, v in vars(args).items() if k != "argv"}, "argv": args.argv,
                   "elapsed": elapsed, "started": started, "servers": server_runs, "memory": memory,
                   "clients": client_runs, "problems": problems}, f, indent=1)
    text = report(args, server_runs, memory, client_runs, problems, started, elapsed)
    with open(args.output, "w") as f:
        f.write(text + kept_sections(args.output))
    print(f"\nwrote {args.output} ({elapsed / 60:.1f} min); server logs in {build}", flush=True)
    if problems:
        print("problems:\n  " + "\n  ".join(problems))


if __name__ == "__main__":
    main()
