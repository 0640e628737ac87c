"""Run the Autobahn TestSuite (through kosoku) against fastws, as a server or as a client.

    python autobahn/run.py server     # kosoku drives `python -m fastws echo`
    python autobahn/run.py client     # kosoku serves the cases to autobahn/echo_client.py

Reports go to autobahn/reports/<mode>/ (index.json and SUMMARY.md are committed). One line
per case group is printed; the exit status is non-zero when any case is FAILED, NON-STRICT,
UNIMPLEMENTED or ERROR (the harness could not run it).

Both modes run `--parallel` cases at a time (default 2, one per core here); client mode's
permessage-deflate offer is explained in echo_client.py.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BEHAVIOURS = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED", "ERROR")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


def kosoku_command() -> list[str]:
    path = shutil.which("kosoku")
    if path is None:
        raise SystemExit("kosoku is not installed: pip install -e '.[autobahn]'")
    return [path]


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def selection(args: argparse.Namespace) -> list[str]:
    flags = []
    for case in args.include or ():
        flags += ["-i", case]
    for case in args.exclude or ():
        flags += ["-x", case]
    return flags


def run_server_mode(args: argparse.Namespace, outdir: str) -> None:
    port = free_port()
    # The suite's largest messages are 16 MiB (cases 9.1.6, 9.2.6); fastws' default is 4 MiB.
    echo = subprocess.Popen([sys.executable, "-m", "fastws", "echo", "--port", str(port),
                             "--workers", str(args.parallel),
                             "--max-message-size", str(16 * 1024 * 1024)],
                            cwd=ROOT)
    try:
        wait_for_port(port, echo)
        subprocess.run(kosoku_command() + ["-m", "fuzzingclient", "-p", str(args.parallel),
                                           "-o", outdir, *selection(args), f"127.0.0.1:{port}"],
                       check=False, stdout=subprocess.DEVNULL if not args.verbose else None)
    finally:
        stop(echo)


def run_client_mode(args: argparse.Namespace, outdir: str) -> None:
    sys.path.insert(0, HERE)
    from echo_client import run_all

    port = free_port()
    server = subprocess.Popen(kosoku_command() + ["-m", "fuzzingserver", "-o", outdir,
                                                  *selection(args), f"127.0.0.1:{port}"],
                              stdout=subprocess.DEVNULL if not args.verbose else None)
    try:
        wait_for_port(port, server)
        run_all(f"ws://127.0.0.1:{port}", agent="fastws", parallel=args.parallel)
        # The server writes its reports on /updateReports; give it a moment to finish.
        deadline = time.monotonic() + 30
        while not os.path.exists(os.path.join(outdir, "index.json")):
            if time.monotonic() > deadline:
                raise TimeoutError("kosoku wrote no index.json")
            time.sleep(0.1)
    finally:
        stop(server)


def summarize(mode: str, outdir: str, elapsed: float) -> int:
    with open(os.path.join(outdir, "index.json")) as f:
        index = json.load(f)
    results: dict[str, dict[str, str]] = {}
    for cases in index.values():
        for case_id, result in cases.items():
            worst = result["behavior"]
            if result.get("behaviorClose") in ("FAILED", "NON-STRICT") and worst == "OK":
                worst = result["behaviorClose"]
            results[case_id] = {"behavior": worst, "duration": result.get("duration", 0)}
    groups: dict[int, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    bad: list[str] = []
    for case_id, result in results.items():
        group = int(case_id.split(".")[0])
        behaviour = result["behavior"]
        groups[group][behaviour] += 1
        if behaviour in ("FAILED", "NON-STRICT", "UNIMPLEMENTED", "ERROR"):
            bad.append(f"{case_id} {behaviour}")
    lines = [f"# Autobahn TestSuite, fastws as {mode}", "",
             f"{len(results)} cases in {elapsed:.0f} s (kosoku, `python autobahn/run.py {mode}`).",
             "", "| group | " + " | ".join(BEHAVIOURS) + " |",
             "|---|" + "---|" * len(BEHAVIOURS)]
    for group in sorted(groups):
        counts = groups[group]
        print(f"{mode} group {group:2d}: " + "  ".join(f"{b} {counts[b]}" for b in BEHAVIOURS))
        lines.append(f"| {group} | " + " | ".join(str(counts[b]) for b in BEHAVIOURS) + " |")
    total = collections.Counter(r["behavior"] for r in results.values())
    lines.append("| all | " + " | ".join(str(total[b]) for b in BEHAVIOURS) + " |")
    slowest = sorted(results.items(), key=lambda item: -item[1]["duration"])[:5]
    lines += ["", "Slowest cases (ms): " + ", ".join(f"{c} {r['duration']}" for c, r in slowest)]
    if bad:
        lines += ["", "Not passing: " + ", ".join(sorted(bad))]
    with open(os.path.join(outdir, "SUMMARY.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"{mode}: {total['OK']} OK, {total['INFORMATIONAL']} INFORMATIONAL, "
          f"{total['UNIMPLEMENTED']} UNIMPLEMENTED, {total['NON-STRICT']} NON-STRICT, "
          f"{total['FAILED']} FAILED, {total['ERROR']} ERROR in {elapsed:.0f} s")
    for line in sorted(bad):
        print(f"  not passing: {line}")
    return 1 if bad else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("server", "client"))
    parser.add_argument("-i", "--include", action="append", help="case id or glob to run")
    parser.add_argument("-x", "--exclude", action="append", help="case id or glob to skip")
    parser.add_argument("-p", "--parallel", type=int, default=2,
                        help="cases run at a time (default 2)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    outdir = os.path.join(HERE, "reports", args.mode)
    shutil.rmtree(outdir, ignore_errors=True)
    os.makedirs(outdir)
    started = time.monotonic()
    if args.mode == "server":
        run_server_mode(args, outdir)
    else:
        run_client_mode(args, outdir)
    return summarize(args.mode, outdir, time.monotonic() - started)


if __name__ == "__main__":
    sys.exit(main())
