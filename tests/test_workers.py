"""serve(..., workers=N): processes sharing one port, and their shutdown.

The server runs in a subprocess (forking the pytest process would copy it): a script
that serves with workers=2 and answers every message with its pid.
"""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import TIMEOUT, run_until

import fastws
from fastws import CloseCode

SERVER = textwrap.dedent("""
    import os, signal, sys
    import fastws

    class WhoAmI:
        def on_frame(self, conn, frame):
            conn.send_text(str(os.getpid()))

    loop = fastws.Loop()
    server = fastws.serve(WhoAmI(), "127.0.0.1", 0, loop=loop, workers=2)
    os.write(1, f"{server.worker} {server.port} {os.getpid()}\\n".encode())  # one write each
    if server.worker == 0:
        def stop(*_):
            loop.call_soon_threadsafe(lambda: (server.close(), loop.stop()))
        signal.signal(signal.SIGTERM, stop)
    loop.run()
    loop.close()
    if server.worker == 0:
        print("joined", server.join_workers(10), flush=True)
    else:
        print("worker done", flush=True)
""")


class Ask:
    def __init__(self):
        self.answers = []
        self.closed = []

    def on_upgraded(self, conn):
        conn.send_text("pid?")

    def on_frame(self, conn, frame):
        self.answers.append(int(frame.string_data))

    def on_closed(self, conn, code, reason):
        self.closed.append(code)


@pytest.fixture
def workers_server():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True,
                            env=env)
    try:
        banners = sorted(proc.stdout.readline().split() for _ in range(2))
        yield proc, banners
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)
        proc.stdout.close()


def test_workers_share_the_port_and_stop_with_the_parent(workers_server, loop):
    proc, banners = workers_server
    (index0, port0, parent), (index1, port1, worker) = banners
    assert (index0, index1) == ("0", "1") and port0 == port1 and parent != worker
    pids = {int(parent), int(worker)}

    # New connections are spread over both processes by the kernel.
    askers = [Ask() for _ in range(40)]
    conns = [fastws.connect(f"ws://127.0.0.1:{port0}/", a, loop=loop) for a in askers]
    run_until(loop, lambda: all(a.answers for a in askers))
    served_by = {a.answers[0] for a in askers}
    assert served_by == pids

    # SIGTERM to the parent: it closes; the workers see it and close their WebSockets
    # with 1001 too, then everyone exits.
    proc.send_signal(signal.SIGTERM)
    run_until(loop, lambda: all(a.closed for a in askers))
    assert {a.closed[0] for a in askers} == {CloseCode.GOING_AWAY}
    out, _ = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0
    assert "joined True" in out
    assert all(c.closed for c in conns)


def test_worker_stops_when_the_parent_dies(workers_server, loop):
    proc, banners = workers_server
    worker_pid = int(banners[1][2])
    proc.kill()                                      # no chance to close anything
    proc.wait(TIMEOUT)

    def worker_gone():
        try:
            os.kill(worker_pid, 0)
        except ProcessLookupError:
            return True
        # A zombie until init reaps it: gone as far as serving goes.
        with open(f"/proc/{worker_pid}/stat") as f:
            return f.read().split(")")[1].split()[0] == "Z"
    run_until(loop, worker_gone)


def test_workers_argument_is_checked(loop):
    with pytest.raises(ValueError, match="at least 1"):
        fastws.serve(Ask(), "127.0.0.1", 0, loop=loop, workers=0)
