"""End-to-end echo cells of the fastws server, timed with pytest-benchmark.

Each round runs the C load generator (bench/echo/loadgen.c) for a fixed number of messages against
a `python -m fastws echo --no-compression` server started once for the module: the time of a round
is the time from the first message sent to the last echo checked (reported by the load generator,
so process start-up and the handshake are not in it). Compare two revisions with

    pytest bench/test_echo.py --benchmark-only --benchmark-save=before
    pytest bench/test_echo.py --benchmark-only --benchmark-compare

The whole matrix against the peers is bench/echo/run.py.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

# name: (connections, in flight per connection, payload bytes, messages per connection)
CELLS = {
    "pipelined-32B": (1, 16, 32, 20000),
    "ping-pong-32B": (1, 1, 32, 3000),
    "pipelined-64KiB": (1, 16, 65536, 2000),
    "100conns-32B": (100, 16, 32, 400),
}


def _pin(cpu: int | None):
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


TWO_CPUS = len(os.sched_getaffinity(0)) >= 2
SERVER_CPU, LOAD_CPU = (0, 1) if TWO_CPUS else (None, None)


@pytest.fixture(scope="module")
def loadgen(tmp_path_factory) -> str:
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler (cc) to build bench/echo/loadgen.c")
    out = str(tmp_path_factory.mktemp("echo") / "loadgen")
    subprocess.run([cc, "-O2", "-pthread", "-o", out, os.path.join(HERE, "echo", "loadgen.c")],
                   check=True)
    return out


@pytest.fixture(scope="module")
def fastws_server():
    pytest.importorskip("fastws")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "fastws", "echo", "--port", str(port),
                             "--no-compression"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO,
                            preexec_fn=_pin(SERVER_CPU))
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            pytest.fail(f"fastws echo server exited: {proc.stderr.read().decode()[-500:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail("fastws echo server did not start listening")
            time.sleep(0.05)
    yield port
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _run(loadgen: str, port: int, conns: int, inflight: int, size: int, count: int) -> dict:
    p = subprocess.run([loadgen, "--port", str(port), "--conns", str(conns),
                        "--inflight", str(inflight), "--size", str(size), "--count", str(count)],
                       capture_output=True, text=True, timeout=120, preexec_fn=_pin(LOAD_CPU))
    lines = [line for line in p.stdout.splitlines() if line.startswith("{")]
    assert lines, f"loadgen failed (exit {p.returncode}): {p.stderr[-500:]}"
    r = json.loads(lines[-1])
    assert p.returncode == 0 and r["ok"], f"echo run failed: {r} {p.stderr[-500:]}"
    assert r["total_messages"] == conns * count and r["mismatches"] == 0
    return r


@pytest.mark.parametrize("cell", list(CELLS))
def test_fastws_server_echo(benchmark, loadgen, fastws_server, cell):
    conns, inflight, size, count = CELLS[cell]
    _run(loadgen, fastws_server, conns, inflight, size, max(count // 10, 10))  # warm-up

    results = []

    def one_round():
        r = _run(loadgen, fastws_server, conns, inflight, size, count)
        results.append(r)
        return r["duration_s"]

    # time as the load generator measured it (first send to last echo), not the process lifetime
    benchmark.extra_info.update(connections=conns, in_flight=inflight, size=size,
                                messages=conns * count)
    benchmark.pedantic(one_round, rounds=5, iterations=1)
    durations = sorted(r["duration_s"] for r in results)
    # replace pytest-benchmark's wall-clock timings (which include process start) by the loadgen's
    if benchmark.stats is not None:     # None under --benchmark-disable
        stats = benchmark.stats.stats
        stats.data[:] = durations
        for attr in list(vars(stats)):
            if attr != "data":          # drop the cached statistics of the wall-clock timings
                del vars(stats)[attr]
    med = durations[len(durations) // 2]

    def median_of(key: str) -> float:
        return sorted(r[key] for r in results)[len(results) // 2]

    benchmark.extra_info.update(msgs_per_s=round(conns * count / med),
                                lat_p50_us=median_of("lat_p50_us"),
                                lat_p99_us=median_of("lat_p99_us"))
