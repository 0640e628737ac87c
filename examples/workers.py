"""Multi-process workers: several processes serve one port with SO_REUSEPORT.

One fastws Loop runs in one thread, so a server uses one CPU core. To use more,
serve(..., workers=N) forks N - 1 worker processes, each with its own loop and its own
socket on the same port (SO_REUSEPORT): the kernel spreads new connections over them.
`python -m fastws echo --workers N` does exactly that.

Here a server process (this file run with `serve`) uses workers=2, and each process
answers "pid?" with its process id; we open 20 connections and report which process
served each, stop it with SIGTERM (its workers follow), then do the same against
`python -m fastws echo --workers 2`.

Run:  python examples/workers.py    (Linux: SO_REUSEPORT balances across processes)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import fastws
from fastws import Connection, Frame

WORKERS = 2
CONNECTIONS = 20


class WhoAmI:
    def on_frame(self, conn: Connection, frame: Frame) -> None:
        conn.send_text(str(os.getpid()))


def serve_with_workers(port: int) -> None:
    loop = fastws.Loop()
    server = fastws.serve(WhoAmI(), "127.0.0.1", port, loop=loop, workers=WORKERS)
    # serve() returned in every process: the parent (worker 0) and each forked worker.
    # One write per line: the processes share stdout.
    sys.stdout.write(f"worker {server.worker} listening (pid {os.getpid()})\n")
    sys.stdout.flush()

    def stop() -> None:
        server.close()                  # the workers see it and close too
        loop.stop()

    if server.worker == 0:
        signal.signal(signal.SIGTERM, lambda *_: loop.call_soon_threadsafe(stop))
    loop.run()
    loop.close()
    if server.worker == 0:
        server.join_workers(10)


class Ask:
    def __init__(self, answers: list[str], text: str) -> None:
        self.answers = answers
        self.text = text

    def on_upgraded(self, conn: Connection) -> None:
        conn.send_text(self.text)

    def on_frame(self, conn: Connection, frame: Frame) -> None:
        self.answers.append(frame.string_data)
        conn.close()

    def on_closed(self, conn: Connection, code: int, reason: str) -> None:
        if len(self.answers) == CONNECTIONS or code != 1000:
            conn.loop.stop()


def ask_many(port: int, text: str) -> list[str]:
    loop = fastws.Loop()
    answers: list[str] = []
    for _ in range(CONNECTIONS):
        fastws.connect(f"ws://127.0.0.1:{port}/", Ask(answers, text), loop=loop)
    loop.call_later(10, loop.stop)
    loop.run()
    loop.close()
    return answers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def library_workers() -> None:
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "serve", str(port)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        banners = [server.stdout.readline().strip() for _ in range(WORKERS)]
        answers = ask_many(port, "pid?")
    finally:
        server.terminate()
        server.wait(10)
    pids = {line.rsplit(" ", 1)[1].rstrip(")") for line in banners}
    counts = {pid: answers.count(pid) for pid in sorted(pids)}
    print(f"serve(workers={WORKERS}): {len(answers)} connections served as {counts}")
    assert len(answers) == CONNECTIONS and set(answers) <= pids


def command_line_workers() -> None:
    port = free_port()
    echo = subprocess.Popen([sys.executable, "-m", "fastws", "echo", "--port", str(port),
                             "--workers", str(WORKERS)], stdout=subprocess.PIPE, text=True)
    try:
        assert echo.stdout is not None
        banners = [echo.stdout.readline().strip() for _ in range(WORKERS)]  # one per worker
        answers = ask_many(port, "hello")
    finally:
        echo.terminate()
        echo.wait(10)
    print("\n".join(banners))
    print(f"echo --workers {WORKERS}: {answers.count('hello')} of {CONNECTIONS} echoed")
    assert answers == ["hello"] * CONNECTIONS


def main() -> None:
    library_workers()
    command_line_workers()


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve_with_workers(int(sys.argv[2]))
    else:
        main()
