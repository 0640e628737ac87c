"""Real services for the backplane tests: a redis-server and `python -m fastws chat` processes.

`RedisServer` runs Debian's redis-server on a free 127.0.0.1 port with no persistence
(`--save "" --appendonly no`), in the foreground, and can be killed (SIGKILL) and
restarted on the same port. `ChatServer` runs the chat relay as users start it, with
`--port 0`, and reads the port and the workers' pids from the banners they print.
`serving_pid` tells which server process holds the other end of a client's socket, from
/proc (the kernel's own answer, no help from the server).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import fastws

START_TIMEOUT = 15.0
REDIS = shutil.which("redis-server") or (
    "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    import random
    for _ in range(200):
        port = random.randrange(20000, 45000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue
    raise AssertionError("no free port pair for a cluster node")


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    package_parent = str(Path(fastws.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent,
                                                      os.environ.get("PYTHONPATH")]))
    return env


class RedisServer:
    """redis-server on 127.0.0.1:port, no persistence; `kill()` and `start()` again."""

    def __init__(self, workdir: Path, *extra: str, tls: bool = False,
                 port: int | None = None) -> None:
        assert REDIS is not None
        self.workdir = workdir
        self.port = port if port is not None else free_port()
        self.extra = list(extra)
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"redis-{self.port}.log"
        self.start()

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        ports = (["--port", "0", "--tls-port", str(self.port)] if self.tls
                 else ["--port", str(self.port)])
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [REDIS, *ports, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(self.workdir), "--daemonize", "no", *self.extra],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert self.proc.poll() is None, f"redis-server exited: {self.output()}"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                assert time.monotonic() < deadline, f"redis-server did not listen: {self.output()}"
                time.sleep(0.02)          # bounded poll for the listener

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def kill(self) -> None:
        """SIGKILL: Redis disappears without closing anything gracefully."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def command(self, *args: str | bytes, auth: tuple[str, str] | None = None) -> Any:
        """One command over a plain socket (RESP through hiredis): the test's own client."""
        import hiredis
        reader = hiredis.Reader()
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            if auth is not None:
                sock.sendall(hiredis.pack_command(("AUTH", *auth)))
            sock.sendall(hiredis.pack_command(args))
            replies = []
            want = 2 if auth is not None else 1
            while len(replies) < want:
                data = sock.recv(65536)
                assert data, "redis closed the connection"
                reader.feed(data)
                while (reply := reader.gets()) is not False:
                    replies.append(reply)
            return replies[-1]

    def numsub(self, channel: str, sharded: bool = False) -> int:
        reply = self.command("PUBSUB", "SHARDNUMSUB" if sharded else "NUMSUB", channel)
        assert isinstance(reply, list)
        return int(reply[1])


class ChatServer:
    """`python -m fastws chat --port 0 ...`: its port and its workers' pids."""

    def __init__(self, log: Path, *args: str, workers: int = 1, port: int = 0) -> None:
        self.log_path = log
        self.workers = workers
        with open(log, "wb") as output:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fastws", "chat", "--host", "127.0.0.1", "--port",
                 str(port), "--workers", str(workers), *args],
                stdout=output, stderr=subprocess.STDOUT, env=child_env(),
                start_new_session=True)
        try:
            self.port, self.pids = self._wait_listening()
        except BaseException:
            self.stop()
            raise

    def _wait_listening(self) -> tuple[int, list[int]]:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert self.proc.poll() is None, f"chat server exited: {self.output()}"
            found = re.findall(r"fastws chat server on ws://127\.0\.0\.1:(\d+)/ \(pid (\d+)",
                               self.output())
            if len(found) == self.workers:
                return int(found[0][0]), [int(pid) for _, pid in found]
            assert time.monotonic() < deadline, f"chat server did not start: {self.output()}"
            time.sleep(0.02)              # bounded poll for the banners

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None and all(_alive(pid) for pid in self.pids)

    def fds(self) -> int:
        return sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in self.pids)

    def rss_kib(self) -> int:
        total = 0
        for pid in self.pids:
            with open(f"/proc/{pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)     # workers that outlived the parent
        except ProcessLookupError:
            pass


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def serving_pid(client_port: int, server_port: int, pids: list[int]) -> int | None:
    """The pid (among `pids`) whose socket is the server end of the connection from
    127.0.0.1:client_port to server_port, from /proc/net/tcp and /proc/PID/fd."""
    inode = None
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local, remote = fields[1], fields[2]
            if (int(local.split(":")[1], 16) == server_port
                    and int(remote.split(":")[1], 16) == client_port):
                inode = fields[9]
                break
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                        return pid
                except OSError:
                    continue
        except OSError:
            continue
    return None


class RedisCluster:
    """Three redis-server primaries on free ports, made a Redis Cluster by redis-cli
    (`--cluster create`, no replicas), no persistence; every node's config in workdir."""

    def __init__(self, workdir: Path, size: int = 3) -> None:
        self.nodes: list[RedisServer] = []
        try:
            for index in range(size):
                node_dir = workdir / f"node{index}"
                node_dir.mkdir()
                self.nodes.append(RedisServer(node_dir, "--cluster-enabled", "yes",
                                              "--cluster-config-file", "nodes.conf",
                                              "--cluster-node-timeout", "2000",
                                              port=free_cluster_port()))
            cli = shutil.which("redis-cli")
            assert cli is not None, "redis-cli (redis-tools) is needed to create a cluster"
            subprocess.run([cli, "--cluster", "create",
                            *[f"127.0.0.1:{node.port}" for node in self.nodes],
                            "--cluster-replicas", "0", "--cluster-yes"],
                           check=True, capture_output=True, timeout=30)
            deadline = time.monotonic() + START_TIMEOUT
            while not all(b"cluster_state:ok" in node.command("CLUSTER", "INFO")
                          for node in self.nodes):
                assert time.monotonic() < deadline, "the cluster did not become ok"
                time.sleep(0.05)          # bounded poll for the cluster to agree
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def owner(self, channel: str) -> RedisServer:
        slot = int(self.nodes[0].command("CLUSTER", "KEYSLOT", channel))
        for node in self.nodes:
            for start, end, *_ in node.command("CLUSTER", "SLOTS"):
                if start <= slot <= end and _[0][1] == node.port:
                    return node
        raise AssertionError(f"no node owns slot {slot}")

    def node_id(self, node: RedisServer) -> str:
        return str(node.command("CLUSTER", "MYID").decode())

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
