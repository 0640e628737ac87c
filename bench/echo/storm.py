"""Connection storms: new WebSocket connections per second, clear and TLS, fastws and its peers.

    python bench/echo/storm.py [--transports clear tls] [--servers fastws picows ...]
        [--concurrency 50] [--repeat 3] [--duration 3] [--warmup 0.5] [--output FILE.md]
        [--tree NAME=PATH ...]

Compiles the C storm client (storm.c, linked with OpenSSL) and makes a throw-away ECDSA P-256
certificate for 127.0.0.1/localhost with the `openssl` command. Each server under test runs
pinned to CPU 0 (clear, or with that certificate for TLS); the storm client runs pinned to CPU 1
(`--placement same`: CPU 0 too) and keeps K clients busy, each one connecting, handshaking
(TLS: a full handshake, no resumption, the certificate verified), echoing one 32 B message,
closing with the closing handshake and waiting for the server's FIN, then starting again.
Runs are interleaved across servers (A B C D A B C D ...) and repeated; the report gives medians
and min-max. Prints the report as markdown (and writes it to --output, with the raw runs next
to it as .json). `--tree before=/path/to/checkout` adds a row "fastws before" running the
fastws of that source tree (extensions built in place), for A/B runs in one sitting.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import run  # noqa: E402  (bench/echo/run.py: servers, pinning, /proc CPU, report helpers)

SERVERS = ["fastws", "picows (uvloop)", "websockets", "aiohttp"]


def server_specs(names: list[str], certfile: str | None, keyfile: str | None,
                 trees: dict[str, str]) -> list[dict]:
    tls = ["--certfile", certfile, "--keyfile", keyfile] if certfile and keyfile else []
    fastws = [run.PY, "-m", "fastws", "echo", "--host", "127.0.0.1", "--no-compression"]

    def tree(path: str):
        # `python -m` imports from the working directory first: run inside the tree.
        return lambda p: ["sh", "-c", 'cd "$0" && PYTHONPATH="$0" exec "$@"', path,
                          *fastws, "--port", str(p), *tls]

    def peer(script: str, *options: str):
        return lambda p: [run.PY, f"{HERE}/servers/{script}", "--port", str(p), *options, *tls]

    specs = {
        "fastws": lambda p: fastws + ["--port", str(p), *tls],
        "picows (uvloop)": peer("picows_echo.py", "--uvloop"),
        "websockets": peer("websockets_echo.py"),
        "aiohttp": peer("aiohttp_echo.py"),
    }
    return ([{"name": name, "cmd": specs[name], "peer": name != "fastws"} for name in names]
            + [{"name": f"fastws {name}", "cmd": tree(path), "peer": False,
                "log": f"fastws-{name}"} for name, path in trees.items()])


def make_certificate(where: str) -> tuple[str, str]:
    """A self-signed ECDSA P-256 certificate for localhost and 127.0.0.1 (cert, key)."""
    if not shutil.which("openssl"):
        sys.exit("the TLS storm needs the openssl command (Debian: apt-get install openssl)")
    cert, key = os.path.join(where, "cert.pem"), os.path.join(where, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def build_storm(build: str) -> str:
    if not shutil.which("cc"):
        sys.exit("cc not found: the storm client needs a C compiler")
    exe = os.path.join(build, "storm")
    result = subprocess.run(["cc", "-O2", "-o", exe, f"{HERE}/storm.c", "-lssl", "-lcrypto"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"building storm.c failed (OpenSSL headers: Debian's libssl-dev):\n"
                 f"{result.stderr[-2000:]}")
    return exe


def storm_once(exe: str, server: run.Server, ca: str | None, args: argparse.Namespace) -> dict:
    cmd = [exe, "--port", str(server.port), "--concurrency", str(args.concurrency),
           "--duration", str(args.duration), "--warmup", str(args.warmup)]
    if ca:
        cmd += ["--tls", ca]
    cpu0 = run.cpu_seconds(server.proc.pid)
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=run.pin(run.LOAD_CPU),
                           timeout=args.warmup + args.duration + 60)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": "storm client timed out"}
    cpu = run.cpu_seconds(server.proc.pid) - cpu0
    lines = [line for line in p.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"ok": False, "error": f"storm exit {p.returncode}: {p.stderr.strip()[-300:]}"}
    r = json.loads(lines[-1])
    if not r.get("ok"):
        r["error"] = (f"{r.get('errors')} error(s), first: {r.get('first_error')}"
                      if r.get("errors") else "no connection completed in the window")
    total = r.get("total_conns") or 0
    r["server_cpu_s"] = cpu
    r["server_cpu_us_per_conn"] = cpu / total * 1e6 if total else None
    return r


def fmt_ms(us: float | None) -> str:
    return "-" if us is None else f"{us / 1000:.2f}" if us < 10_000 else f"{us / 1000:.0f}"


def report(args: argparse.Namespace, runs: list[dict], problems: list[str], started: str,
           elapsed: float) -> str:
    argv = " ".join(["python bench/echo/storm.py"] + args.argv)
    same = run.LOAD_CPU == run.SERVER_CPU
    L = ["## Connection storms", "",
         f"Generated by `{argv}` on {started} ({elapsed / 60:.1f} min).", ""]
    L += run.machine() + [f"- Versions: {run.versions()}", ""]
    L += [f"- Client: `bench/echo/storm.c` (C, epoll, OpenSSL {ssl_version()}), "
          f"{args.concurrency} clients at once, each looping over: TCP connect, TLS handshake "
          "(TLS rows: full handshake, no session resumption, ECDSA P-256 certificate verified), "
          "WebSocket handshake (Sec-WebSocket-Accept checked), one 32 B binary message echoed "
          "and compared, close frame 1000, the server's close frame, the server's FIN.",
          f"- Server pinned to CPU {run.SERVER_CPU}, client to CPU {run.LOAD_CPU}"
          f"{' (same core)' if same else ''}; {args.warmup} s warm-up then {args.duration} s "
          f"measured; {args.repeat} repeat(s) interleaved across servers; median (min-max).",
          "- conns/s: connections completed (server's FIN seen) in the measured window per "
          "second. Server CPU µs/conn: utime+stime of the server process over the whole client "
          "run / connections completed in it. Server CPU %: µs/conn x conns/s. Client CPU %: the "
          "storm client's CPU over the window (⚠ above 90: the client is the limit). Conn time: "
          "connect to FIN of one connection, p50 / p99 in ms. vs best peer: conns/s over the best "
          "of the other servers in the same table.", ""]
    for transport in args.transports:
        rows = [r for r in runs if r["transport"] == transport]
        if not rows:
            continue
        med = {}
        for name in args.names:
            ok = [r["conns_per_s"] for r in rows if r["server"] == name and r.get("ok")]
            if ok:
                med[name] = statistics.median(ok)
        L += [f"### {'TLS (wss://)' if transport == 'tls' else 'clear (ws://)'}", "",
              "| server | conns/s median (min-max) | server CPU µs/conn | server CPU % "
              "| client CPU % | conn time p50 / p99 ms | vs best peer |",
              "|---|---|---|---|---|---|---|"]
        for name in args.names:
            mine = [r for r in rows if r["server"] == name]
            ok = [r for r in mine if r.get("ok")]
            if not mine:
                continue
            if not ok:
                L.append(f"| {name} | FAILED | | | | | |")
                continue
            rate = run.summary([r["conns_per_s"] for r in ok])
            cpu = run.summary([r["server_cpu_us_per_conn"] for r in ok
                               if r.get("server_cpu_us_per_conn")])
            client = statistics.median(r["cpu_pct"] for r in ok)
            p50 = statistics.median(r["conn_p50_us"] for r in ok)
            p99 = statistics.median(r["conn_p99_us"] for r in ok)
            # A fastws row against the peers only (not against another tree's fastws).
            others = [v for n, v in med.items()
                      if n != name and not (name.startswith("fastws") and n.startswith("fastws"))]
            vs = f"{rate[0] / max(others):.2f}x" if others else "-"
            failed = f" ({len(mine) - len(ok)} failed)" if len(ok) < len(mine) else ""
            flag = " ⚠" if client > 90 and not same else ""
            cpu_us = run.fmt_us(cpu[0]) if cpu else "-"
            busy = f"{cpu[0] * rate[0] / 1e4:.0f}" if cpu else "-"
            L.append(f"| {name} | {run.fmt_rate(rate[0])} ({run.fmt_rate(rate[1])}-"
                     f"{run.fmt_rate(rate[2])}){failed} | {cpu_us} | {busy} | {client:.0f}{flag} | "
                     f"{fmt_ms(p50)} / {fmt_ms(p99)} | {vs} |")
        L.append("")
    L += ["Problems seen:", ""] + ([f"- {p}" for p in problems] or ["- none"]) + [""]
    return "\n".join(L)


def ssl_version() -> str:
    out = subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.split()
    return out[1] if len(out) > 1 else "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--transports", nargs="+", choices=["clear", "tls"], default=["clear", "tls"])
    ap.add_argument("--servers", nargs="+", choices=SERVERS, default=SERVERS)
    ap.add_argument("--concurrency", type=int, default=50, help="clients at once (default 50)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--placement", choices=["cross", "same"], default="cross")
    ap.add_argument("--output", help="also write the markdown here, and the raw runs as .json")
    ap.add_argument("--tree", action="append", default=[], metavar="NAME=PATH",
                    help="also run the fastws of this source tree, as \"fastws NAME\"")
    args = ap.parse_args()
    trees = dict(item.split("=", 1) for item in args.tree)
    trees = {name: os.path.abspath(path) for name, path in trees.items()}
    args.names = args.servers + [f"fastws {name}" for name in trees]
    args.argv = sys.argv[1:]
    run.place(args.placement)
    run.raise_nofile()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    t0 = time.monotonic()
    build = tempfile.mkdtemp(prefix="fastws-storm-")
    exe = build_storm(build)
    cert, key = make_certificate(build)
    runs: list[dict] = []
    problems: list[str] = []
    for transport in args.transports:
        tls = transport == "tls"
        specs = server_specs(args.servers, cert if tls else None, key if tls else None, trees)
        live = [run.Server(spec, build) for spec in specs]
        try:
            for rep in range(args.repeat):
                for server in live:
                    r = storm_once(exe, server, cert if tls else None, args)
                    r.update(server=server.spec["name"], transport=transport, repeat=rep)
                    runs.append(r)
                    print(f"{transport:>5} #{rep} {server.spec['name']:<16} "
                          f"{r.get('conns_per_s', 0):>9,.0f} conns/s  server "
                          f"{run.fmt_us(r.get('server_cpu_us_per_conn'))} us/conn  client "
                          f"{r.get('cpu_pct', 0):.0f}%  "
                          f"{'ok' if r.get('ok') else 'FAIL ' + str(r.get('error'))}",
                          file=sys.stderr, flush=True)
                    if not r.get("ok"):
                        problems.append(f"{transport} {server.spec['name']} #{rep}: "
                                        f"{r.get('error')}")
                    server.ensure(f"after the {transport} storm")
        finally:
            for server in live:
                problems += [f"{server.spec['name']} ({transport}) {c}" for c in server.crashes]
                server.stop()
    text = report(args, runs, problems, started, time.monotonic() - t0)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
        with open(os.path.splitext(args.output)[0] + ".json", "w") as f:
            json.dump({"argv": args.argv, "started": started, "runs": runs,
                       "problems": problems}, f, indent=1)
    if problems:
        print(f"server logs kept in {build}", file=sys.stderr)
    else:
        shutil.rmtree(build, ignore_errors=True)


if __name__ == "__main__":
    main()
