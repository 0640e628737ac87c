"""Multi-process workers: several processes serve one port with SO_REUSEPORT.

One fastws Loop runs in one thread, so a server uses one CPU core. To use more, start
one process per core, each with its own loop and serve(..., reuse_port=True) on the same
port: the kernel spreads new connections over them. `python -m fastws echo --workers N`
does exactly that.

Here the parent forks two workers that each answer "pid?" with their process id, then
opens 20 connections and reports which process served each; then it does the same
against `python -m fastws echo --workers 2`.

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


def worker(port: int, ready: int) -> None:
    loop = fastws.Loop()
    fastws.serve(WhoAmI(), "127.0.0.1", port, loop=loop, reuse_port=True)
    os.write(ready, b".")                       # listening: tell the parent
    loop.run()                                  # until SIGTERM


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


def forked_workers() -> None:
    port = free_port()
    ready_read, ready_write = os.pipe()
    children = []
    for _ in range(WORKERS):
        pid = os.fork()
        if pid == 0:
            try:
                worker(port, ready_write)
            finally:
                os._exit(0)
        children.append(pid)
    try:
        got = b""
        while len(got) < WORKERS:
            got += os.read(ready_read, WORKERS)
        answers = ask_many(port, "pid?")
    finally:
        for pid in children:
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)
    counts = {pid: answers.count(str(pid)) for pid in children}
    print(f"forked workers: {len(answers)} connections served as {counts}")
    assert len(answers) == CONNECTIONS and set(answers) <= {str(pid) for pid in children}


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
    forked_workers()
    command_line_workers()


if __name__ == "__main__":
    main()
