"""Shared bits of the Python echo clients: arguments, payloads, the measurement window, output."""
import argparse
import json
import os
import time
from collections import deque


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--inflight", type=int, default=1)
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--warmup", type=float, default=0.5)
    return ap.parse_args()


class Meter:
    """Payloads to send (16 distinct ones, cycled), the FIFO of what is in flight, the counters."""

    def __init__(self, size, inflight, duration, warmup):
        self.payloads = [os.urandom(size) for _ in range(16)]
        self.inflight = inflight
        self.pending = deque()          # (payload, send time)
        self.sent = 0
        self.start = time.perf_counter()
        self.t0 = self.start + warmup
        self.t1 = self.t0 + duration
        self.count = 0
        self.total = 0
        self.mismatches = 0
        self.latencies = []
        self.sending = True
        self.cpu0 = self.cpu1 = None

    def next_payload(self):
        p = self.payloads[self.sent & 15]
        self.sent += 1
        self.pending.append((p, time.perf_counter()))
        return p

    def received(self, data):
        """Check one echoed message; returns True while the run should go on sending."""
        now = time.perf_counter()
        if not self.pending:
            self.mismatches += 1
            return False
        expected, t = self.pending.popleft()
        if data != expected:
            self.mismatches += 1
        self.total += 1
        if self.t0 <= now < self.t1:
            if self.cpu0 is None:
                self.cpu0 = time.process_time()
            self.count += 1
            if self.inflight == 1:
                self.latencies.append(now - t)
        if now >= self.t1 and self.sending:
            self.sending = False
            self.cpu1 = time.process_time()
        return self.sending

    def report(self, client, **extra):
        lat = sorted(self.latencies)
        out = {
            "client": client, "size": len(self.payloads[0]), "inflight": self.inflight,
            "messages": self.count, "msgs_per_s": self.count / (self.t1 - self.t0),
            "total_messages": self.total, "mismatches": self.mismatches,
            "lat_p50_us": lat[len(lat) // 2] * 1e6 if lat else None,
            "lat_p99_us": lat[int(len(lat) * 0.99)] * 1e6 if lat else None,
            "cpu_us_per_msg": ((self.cpu1 - self.cpu0) / self.count * 1e6
                               if self.count and self.cpu1 is not None else None),
            "ok": self.mismatches == 0 and self.count > 0,
        }
        out.update(extra)
        print(json.dumps(out), flush=True)
