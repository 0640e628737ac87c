"""Every example in examples/ runs and does what its guide in docs/ says.

Each example is a complete program that starts its own server(s) on 127.0.0.1 (port 0 or
a free port), talks to them and exits non-zero when something is off; the tests run them
as subprocesses with a bounded timeout. Also: README.md's ```python blocks compile, and
those marked `<!-- fastws: runnable -->` run as programs; the docs link only to examples
that exist.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import fastws

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DOCS = ROOT / "docs"

# script -> (timeout in seconds, text its output must contain)
SCRIPTS = {
    "handlers.py": (60, "client closed: (1000, 'done')"),
    "stages.py": (60, "server counted 6 bytes in, 6 bytes out"),
    "fragmentation.py": (60, "/raw: 3 frame(s)"),
    "ping_rtt.py": (60, "no pong within 0.3 s"),
    "close_codes.py": (60, "/deaf gave up after"),
    "flow_control.py": (60, "client received 16 MiB"),
    "tls.py": (60, "command line: 'hello echo'"),
    "compression.py": (60, "echo --no-compression: extension None"),
    "threads.py": (60, "client closed: (1000, 'got everything')"),
    "asyncio_codec.py": (60, "close code: 1000"),
    "build_cython_listener.py": (600, "unmasked frame -> (1002"),
    "workers.py": (60, "echo --workers 2: 20 of 20 echoed"),
    "asyncio_awaitable.py": (60, "client: ConnectionClosed 4000 'you said bye'"),
    "asyncio_callbacks.py": (60, "closed 1000 'got them all'"),
    "uvicorn_fastapi.py": (60, "client: closed by the app: 4000 'bye to you too'"),
    "clients.py": (60, "reconnecting Loop client: stopped after 3 connections"),
    "topics.py": (60, "messages compressed once for everyone: 2"),
}
# Examples run another way (below), or built by one of SCRIPTS.
OTHER_FILES = {"__init__.py", "upper_case.py", "cython_listener.pyx"}


def run_script(args: list[str], timeout: float, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(args)} did not finish within {timeout} s; "
                    f"output so far: {exc.stdout!r} {exc.stderr!r}")


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_example_runs(script, tmp_path):
    timeout, expected = SCRIPTS[script]
    args = [str(EXAMPLES / script)]
    if script == "build_cython_listener.py":
        args.append(str(tmp_path / "build"))            # keep build products out of the tree
    result = run_script(args, timeout)
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    if script == "compression.py" and result.stdout.startswith("skipped:"):
        pytest.skip(result.stdout.strip())
    assert expected in result.stdout, result.stdout
    assert "Traceback" not in result.stderr, result.stderr


def test_every_example_is_run():
    present = {path.name for path in EXAMPLES.iterdir()
               if path.is_file() and path.suffix in (".py", ".pyx")}
    assert present - OTHER_FILES == set(SCRIPTS), "add the new example to SCRIPTS"


def test_upper_case_example():
    sys.path.insert(0, str(EXAMPLES))
    try:
        import upper_case
    finally:
        sys.path.remove(str(EXAMPLES))
    server_loop = fastws.Loop()
    server = fastws.serve(upper_case.UpperCaseServer(), "127.0.0.1", 0, loop=server_loop)
    thread = threading.Thread(target=server_loop.run, daemon=True)
    thread.start()
    try:
        with fastws.Loop() as loop:
            timer = loop.call_later(10, loop.stop)
            answer = upper_case.run_client(f"ws://127.0.0.1:{server.port}/", "i am cow",
                                           loop=loop)
            timer.cancel()
    finally:
        server_loop.call_soon_threadsafe(server.close)
        server_loop.call_soon_threadsafe(server_loop.stop)
        thread.join(10)
        server_loop.close()
    assert answer == "I AM COW"


def test_upper_case_example_without_a_server():
    with socket.socket() as unused:                # bound, not listening: refused
        unused.bind(("127.0.0.1", 0))
        url = f"ws://127.0.0.1:{unused.getsockname()[1]}/"
        result = run_script([str(EXAMPLES / "upper_case.py"), "client", url], 60)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith(f"no answer from {url}: closed 1006 ")
    assert "refused" in result.stderr.lower() and result.stderr.count("\n") == 1


# ------------------------------------------------------------------ README and docs

RUNNABLE_MARK = "<!-- fastws: runnable -->"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(text: str) -> list[tuple[bool, str]]:
    """(marked runnable, code) for each ```python block."""
    blocks = []
    for match in BLOCK.finditer(text):
        before = text[:match.start()].rstrip().splitlines()
        blocks.append((bool(before) and before[-1].strip() == RUNNABLE_MARK, match.group(1)))
    return blocks


def test_readme_python_blocks_compile():
    for i, (_, code) in enumerate(python_blocks((ROOT / "README.md").read_text())):
        compile(code, f"README.md block {i + 1}", "exec")


def test_readme_runnable_blocks_run(tmp_path):
    runnable = [code for marked, code in python_blocks((ROOT / "README.md").read_text())
                if marked]
    if not runnable:
        pytest.skip(f"README.md marks no ```python block with {RUNNABLE_MARK} on the line above")
    for i, code in enumerate(runnable):
        program = tmp_path / f"readme_{i + 1}.py"
        program.write_text(code)
        result = run_script([str(program)], 60, cwd=tmp_path)
        assert result.returncode == 0, f"{code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def test_docs_python_blocks_compile():
    for doc in sorted(DOCS.glob("*.md")):
        for i, (_, code) in enumerate(python_blocks(doc.read_text())):
            compile(code, f"{doc.name} block {i + 1}", "exec")


def test_docs_refer_to_existing_examples_and_guides():
    for doc in sorted(DOCS.glob("*.md")):
        text = doc.read_text()
        for name in re.findall(r"python examples/([\w.]+)", text):
            assert (EXAMPLES / name).is_file(), f"{doc.name} runs a missing example {name}"
            assert name in SCRIPTS, f"{doc.name}: examples/{name} is not run by the tests"
        for link in re.findall(r"\]\(([\w.-]+\.md)\)", text):
            assert (DOCS / link).is_file(), f"{doc.name} links to a missing guide {link}"


def test_every_guide_is_in_the_index():
    index = (DOCS / "index.md").read_text()
    for doc in sorted(DOCS.glob("*.md")):
        if doc.name != "index.md":
            assert f"({doc.name})" in index, f"docs/index.md does not link {doc.name}"


def test_tls_guide_commands(tmp_path):
    """The shell commands of docs/tls.md, with their directory and port changed."""
    blocks = re.findall(r"^```sh\n(.*?)^```", (DOCS / "tls.md").read_text(), re.S | re.M)
    assert blocks[0].strip() == "python examples/tls.py"
    make_certs, serve = blocks[1].strip().splitlines()
    client = blocks[2].strip()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    def adapt(command: str) -> str:
        return (command.replace("/tmp/certs", str(tmp_path / "certs"))
                .replace("python -m", f"{sys.executable} -m")
                + (f" --port {port}" if " echo " in command else ""))

    client = client.replace("127.0.0.1:9001", f"127.0.0.1:{port}")
    subprocess.run(adapt(make_certs), shell=True, check=True, timeout=60, cwd=tmp_path,
                   capture_output=True)
    server = subprocess.Popen(adapt(serve), shell=True, cwd=tmp_path, stdout=subprocess.PIPE,
                              text=True, start_new_session=True)
    try:
        assert server.stdout is not None
        assert server.stdout.readline().startswith("fastws echo server on wss://")
        result = subprocess.run(adapt(client), shell=True, cwd=tmp_path, capture_output=True,
                                text=True, timeout=30)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(10)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello\n"
