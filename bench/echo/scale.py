"""Scale of connections: tens of thousands of WebSocket connections on one worker.

    python bench/echo/scale.py [--conns 20000] [--busy 100] [--servers fastws "picows (uvloop)"]
        [--repeat 3] [--duration 3] [--warmup 0.5] [--output FILE.md]

For each server (one process pinned to CPU 0, started afresh for every round so that its RSS
starts clean; clients pinned to CPU 1) and repeat, interleaved across servers:
  1. `--busy` connections run ping-pong echo (1 message of 32 B in flight each) with no other
     connection open: msgs/s and the latency of each echo (p50/p99, C load generator's histogram);
  2. `--conns - --busy` idle WebSocket connections are opened (connect + handshake, 64 in
     flight) by a second load generator in idle mode: how long that took, and the server's RSS
     before and after (KiB per connection);
  3. the same busy run again while those are open, so `--conns` connections are open in all;
  4. the idle connections are closed with the closing handshake.
The verdict compares 3 with 1: idle connections should slow the busy ones by no more than 10 %
(p99 latency and msgs/s). Raises RLIMIT_NOFILE (soft and hard, which needs root or
CAP_SYS_RESOURCE above the hard limit) so that the server and the load generators inherit it.
Prints the report as markdown (and writes it to --output, with the raw runs as .json).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import run  # noqa: E402  (bench/echo/run.py: servers, load generator, pinning, /proc)

SERVERS = ["fastws", "fastws (busy-poll off)", "picows (uvloop)", "picows (asyncio)",
           "websockets", "aiohttp"]
SLOWDOWN_LIMIT = 1.10   # the target: idle connections cost the busy ones <= 10 %


FD_MARGIN = 64   # the server's other descriptors: listening socket, epoll, pipes, logs


def raise_fd_limit(need: int) -> int:
    """Raise RLIMIT_NOFILE to `need` if allowed (children inherit it); return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, max(hard, need)))
        return need
    except (ValueError, OSError):
        # Above the hard limit without CAP_SYS_RESOURCE (containers often drop it): go as high
        # as the hard limit allows.
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard


class IdleConnections:
    """A load generator in idle mode holding `n` handshaken connections until closed."""

    def __init__(self, build: str, port: int, n: int, timeout: float = 300) -> None:
        self.error = ""
        self.proc = subprocess.Popen(
            [f"{build}/loadgen", "--port", str(port), "--mode", "idle", "--conns", str(n),
             "--handshake-window", "64"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=run.pin(run.LOAD_CPU))
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        self.info = json.loads(line) if line.startswith("{") else {}
        if not self.info.get("ready"):
            self.close()
            raise RuntimeError(f"idle connections not opened: {line.strip() or 'timeout'} "
                               f"{self.error}")

    def close(self) -> dict:
        try:   # communicate() closes stdin: the load generator then closes every connection
            out, err = self.proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        self.error = err.strip()[-300:]
        lines = [line for line in out.splitlines() if line.startswith("{")]
        return json.loads(lines[-1]) if lines else {"error": self.error or "no output"}


def busy_run(build: str, server: run.Server, args: argparse.Namespace) -> dict:
    return run.measure_server(build, server, ("busy", args.busy, args.inflight), args.size,
                              args.duration, args.warmup)


def one_round(build: str, server: run.Server, args: argparse.Namespace, rep: int) -> dict:
    out: dict = {"server": server.spec["name"], "repeat": rep}
    out["alone"] = busy_run(build, server, args)
    time.sleep(0.5)
    out["rss_before_kib"] = run.rss_kib(server.proc.pid)
    idle_n = args.conns - args.busy
    t0 = time.monotonic()
    idle = IdleConnections(build, server.port, idle_n)
    out["open_s"] = idle.info.get("connect_s", time.monotonic() - t0)
    time.sleep(1.0)
    out["rss_idle_kib"] = run.rss_kib(server.proc.pid)
    out["kib_per_conn"] = (out["rss_idle_kib"] - out["rss_before_kib"]) / idle_n
    out["with_idle"] = busy_run(build, server, args)
    closed = idle.close()
    out["idle_closed"] = closed
    problems = [f"busy run {label}: {out[key].get('error') or 'failed'}"
                for key, label in (("alone", "alone"), ("with_idle", "with idle connections"))
                if not out[key].get("ok")]
    if not closed.get("closed") or closed.get("errors"):
        problems.append(f"closing the idle connections: {closed.get('errors')} error(s) "
                        f"{closed.get('error') or ''}".strip())
    elif closed.get("close_timeout"):
        problems.append("closing the idle connections timed out")
    out["error"] = "; ".join(problems)
    out["ok"] = not problems
    return out


def med(rounds: list[dict], key) -> float | None:
    values = [key(r) for r in rounds]
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def report(args: argparse.Namespace, rounds: list[dict], problems: list[str], started: str,
           elapsed: float) -> str:
    idle_n = args.conns - args.busy
    L = ["## Scale of connections", "",
         f"Generated by `{' '.join(['python bench/echo/scale.py'] + args.argv)}` on {started} "
         f"({elapsed / 60:.1f} min).", ""]
    L += run.machine() + [f"- Versions: {run.versions()}", ""]
    if getattr(args, "capped_from", None):
        L += [f"- **{args.conns:,} connections, not {args.capped_from:,}:** the open-file limit "
              f"of this machine is {args.conns + FD_MARGIN:,} and could not be raised (no "
              "CAP_SYS_RESOURCE); the server needs a few descriptors besides its connections."]
    L += [f"- One server process pinned to CPU {run.SERVER_CPU}, load generators pinned to CPU "
          f"{run.LOAD_CPU}. {args.conns:,} WebSocket connections open at once: {idle_n:,} idle "
          f"(handshaken, silent) and {args.busy} busy, each busy one with {args.inflight} "
          f"message(s) of {run.human_size(args.size)} in flight (ping-pong), {args.warmup} s "
          f"warm-up then {args.duration} s measured. {args.repeat} repeat(s) interleaved across "
          "servers, medians.",
          f"- Open {idle_n:,}: time for the idle load generator to connect and handshake them "
          "all (64 handshakes in flight), i.e. for the server to accept them. KiB/conn: server "
          "VmRSS with them open minus before, over their number.",
          "- Busy alone / with idle: the busy connections' msgs/s and echo latency p50 / p99 "
          "(µs), with no other connection open, then with the idle ones open. Slowdown: p99 with "
          "idle over p99 alone, and msgs/s alone over msgs/s with idle; target ≤ "
          f"{SLOWDOWN_LIMIT:.2f} for both.", "",
          f"| server | open {idle_n:,} s (conns/s) | RSS before / with idle MiB | KiB/conn | "
          "busy alone msgs/s | alone p50 / p99 µs | with idle msgs/s | with idle p50 / p99 µs | "
          "slowdown p99 / msgs/s |",
          "|---|---|---|---|---|---|---|---|---|"]
    for name in args.servers:
        mine = [r for r in rounds if r["server"] == name and r.get("ok")]
        if not mine:
            if any(r["server"] == name for r in rounds):
                L.append(f"| {name} | FAILED | | | | | | | |")
            continue
        open_s = med(mine, lambda r: r["open_s"])
        before = med(mine, lambda r: r["rss_before_kib"]) or 0
        with_idle = med(mine, lambda r: r["rss_idle_kib"]) or 0
        kib = med(mine, lambda r: r["kib_per_conn"])
        a_rate = med(mine, lambda r: r["alone"]["msgs_per_s"]) or 0
        a50 = med(mine, lambda r: r["alone"]["lat_p50_us"])
        a99 = med(mine, lambda r: r["alone"]["lat_p99_us"]) or 0
        i_rate = med(mine, lambda r: r["with_idle"]["msgs_per_s"]) or 0
        i50 = med(mine, lambda r: r["with_idle"]["lat_p50_us"])
        i99 = med(mine, lambda r: r["with_idle"]["lat_p99_us"]) or 0
        slow99 = i99 / a99 if a99 else float("nan")
        slow_rate = a_rate / i_rate if i_rate else float("nan")
        verdict = "ok" if slow99 <= SLOWDOWN_LIMIT and slow_rate <= SLOWDOWN_LIMIT else "**over**"
        L.append(f"| {name} | {open_s:.2f} ({idle_n / open_s:,.0f}) | {before / 1024:.0f} / "
                 f"{with_idle / 1024:.0f} | {kib:.1f} | {run.fmt_rate(a_rate)} | "
                 f"{run.fmt_us(a50)} / {run.fmt_us(a99)} | {run.fmt_rate(i_rate)} | "
                 f"{run.fmt_us(i50)} / {run.fmt_us(i99)} | {slow99:.2f} / {slow_rate:.2f} "
                 f"{verdict} |")
    L += ["", "Problems seen:", ""] + ([f"- {p}" for p in problems] or ["- none"]) + [""]
    return "\n".join(L)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--conns", type=int, default=20000, help="connections open in all")
    ap.add_argument("--busy", type=int, default=100, help="of which busy")
    ap.add_argument("--inflight", type=int, default=1)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--servers", nargs="+", choices=SERVERS, default=["fastws", "picows (uvloop)"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--output", help="also write the markdown here, and the raw runs as .json")
    args = ap.parse_args()
    args.argv = sys.argv[1:]
    limit = raise_fd_limit(args.conns + FD_MARGIN)
    args.capped_from = None
    if limit < args.conns + FD_MARGIN:
        args.capped_from, args.conns = args.conns, limit - FD_MARGIN
        print(f"the open-file limit is {limit} and cannot be raised here (needs root with "
              f"CAP_SYS_RESOURCE): {args.conns:,} connections instead of {args.capped_from:,}",
              file=sys.stderr)
    if args.busy >= args.conns:
        sys.exit("--busy must be below --conns")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    t0 = time.monotonic()
    build = tempfile.mkdtemp(prefix="fastws-scale-")
    run.build_c(build)
    specs = [s for s in run.servers(build) if s["name"] in args.servers]
    rounds: list[dict] = []
    problems: list[str] = []
    for rep in range(args.repeat):
        for spec in specs:
            # A fresh server each round: memory freed by the previous round's connections stays
            # in the allocator's free lists and would hide the next round's growth of RSS.
            server = run.Server(spec, build)
            try:
                try:
                    r = one_round(build, server, args, rep)
                except RuntimeError as exc:
                    r = {"server": spec["name"], "repeat": rep, "ok": False, "error": str(exc)}
                rounds.append(r)
                if r.get("ok"):
                    print(f"#{rep} {server.spec['name']:<18} open {r['open_s']:.2f} s "
                          f"{r['kib_per_conn']:.1f} KiB/conn  alone "
                          f"{r['alone']['msgs_per_s']:,.0f} msg/s p99 "
                          f"{r['alone']['lat_p99_us']:.0f} us  with idle "
                          f"{r['with_idle']['msgs_per_s']:,.0f} msg/s p99 "
                          f"{r['with_idle']['lat_p99_us']:.0f} us", file=sys.stderr, flush=True)
                else:
                    problems.append(f"{server.spec['name']} #{rep}: {r['error']}")
                    print(f"#{rep} {server.spec['name']}: FAILED {r['error']}", file=sys.stderr,
                          flush=True)
                if not server.alive():
                    problems.append(f"{spec['name']} #{rep}: the server exited during the round "
                                    f"(log in {server.log_path})")
            finally:
                problems += [f"{spec['name']} {c}" for c in server.crashes]
                server.stop()
    text = report(args, rounds, problems, started, time.monotonic() - t0)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
        with open(os.path.splitext(args.output)[0] + ".json", "w") as f:
            json.dump({"argv": args.argv, "started": started, "rounds": rounds,
                       "problems": problems}, f, indent=1)
    if problems:
        print(f"server logs kept in {build}", file=sys.stderr)
    else:
        shutil.rmtree(build, ignore_errors=True)


if __name__ == "__main__":
    main()
