"""The client side of an Autobahn run, written on the public fastws.connect API.

It speaks the fuzzing server's protocol: /getCaseCount answers with the number of cases
as a text message, /runCase?case=N&agent=A runs case N (we echo every message back,
same type), and /updateReports?agent=A makes the server write its reports.

Cases run `parallel` at a time, in as many processes (see run_all).

The permessage-deflate offer adds client_no_context_takeover to fastws' default offer
(Chrome's: `permessage-deflate; client_max_window_bits`): the fuzzing server's cases 13.2,
13.5 and 13.6 only accept offers carrying it (Autobahn reads it as "the client can be asked
not to take over context"), so without it those 54 cases are UNIMPLEMENTED.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Callable, Iterable

import fastws
from fastws import Connection, Frame, OpCode

CASE_TIMEOUT = 120.0       # seconds; the slowest case (9.x, 16 MiB messages) takes a few
OFFER = fastws.DeflateOptions(client_no_context_takeover=True)


class Echo:
    """Echoes every data message (same type) and collects the text ones."""

    def __init__(self, on_done: Callable[[], None], *, echo: bool = True) -> None:
        self.texts: list[str] = []
        self.on_done = on_done
        self.echo = echo

    def on_frame(self, conn: Connection, frame: Frame) -> None:
        if frame.opcode == OpCode.TEXT:
            self.texts.append(frame.string_data)
        if self.echo and conn.is_open and frame.opcode in (OpCode.TEXT, OpCode.BINARY):
            conn.send(Frame(opcode=frame.opcode, data=frame.data))

    def on_closed(self, conn: Connection, code: int, reason: str) -> None:
        self.on_done()


def _open(loop: fastws.Loop, url: str, handler: Echo) -> None:
    conn = fastws.connect(url, handler, loop=loop, compression=OFFER,
                          max_message_size=None, max_frame_size=None)
    timer = loop.call_later(CASE_TIMEOUT, conn.abort)
    done = handler.on_done

    def finished() -> None:
        timer.cancel()
        done()
    handler.on_done = finished


def fetch_texts(url: str) -> list[str]:
    """Connect, read until the server closes; return the text messages received."""
    loop = fastws.Loop()
    handler = Echo(loop.stop, echo=False)
    _open(loop, url, handler)
    try:
        loop.run()
    finally:
        loop.close()
    return handler.texts


def run_cases(base: str, agent: str, cases: Iterable[int]) -> None:
    """Run the given cases one after another on one loop."""
    for case in cases:
        loop = fastws.Loop()
        _open(loop, f"{base}/runCase?case={case}&agent={agent}", Echo(loop.stop))
        try:
            loop.run()
        finally:
            loop.close()


def _worker(base: str, agent: str, queue: multiprocessing.Queue[int | None]) -> None:
    run_cases(base, agent, iter(queue.get, None))


def run_all(base: str, agent: str = "fastws", *, parallel: int = 1) -> int:
    """Run every case, `parallel` processes at a time, then ask for the reports.

    One process per core, each taking the next case from a shared queue: the slow cases
    (12.x, compressing megabytes) are CPU-bound in the client, so a second loop in the
    same process would not help. Returns the number of cases.
    """
    count = int(fetch_texts(f"{base}/getCaseCount")[0])
    if parallel <= 1:
        run_cases(base, agent, range(1, count + 1))
    else:
        context = multiprocessing.get_context("fork")
        queue: multiprocessing.Queue[int | None] = context.Queue()
        for case in range(1, count + 1):
            queue.put(case)
        workers = [context.Process(target=_worker, args=(base, agent, queue))
                   for _ in range(parallel)]
        for worker in workers:
            queue.put(None)
            worker.start()
        for worker in workers:
            worker.join()
        failed = [w.exitcode for w in workers if w.exitcode != 0]
        if failed:
            raise RuntimeError(f"echo client processes exited with {failed}")
    fetch_texts(f"{base}/updateReports?agent={agent}")
    return count


if __name__ == "__main__":
    print(run_all(sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:9001"), "cases run")
