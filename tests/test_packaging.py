"""Packaging: `python -m build` makes an sdist and a wheel with everything users need, and
the wheel works in a fresh virtual environment (no system site-packages): an echo round
trip, and a Cython extension that cimports fastws._codec from the installed package.

Slow (about a minute: an isolated build, then pip installs from PyPI into the venv);
every step has a timeout. Needs the `build` package and network access to PyPI.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import os
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(importlib.util.find_spec("build") is None,
                                reason="needs the 'build' package (pip install build)")


def run(args: list[str], *, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(map(str, args))} took over {timeout} s: "
                    f"{str(exc.stdout)[-2000:]} {str(exc.stderr)[-2000:]}")
    assert result.returncode == 0, (f"{' '.join(map(str, args))} failed:\n"
                                    f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> tuple[Path, Path]:
    """(sdist, wheel) built by `python -m build` (the wheel is built from the sdist)."""
    out = tmp_path_factory.mktemp("dist")
    # cwd outside the repository: its ./build directory would shadow the `build` package.
    run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], cwd=out, timeout=900)
    sdists = list(out.glob("fastws-*.tar.gz"))
    wheels = list(out.glob("fastws-*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, list(out.iterdir())
    return sdists[0], wheels[0]


def test_wheel_contents(dist):
    _, wheel = dist
    names = zipfile.ZipFile(wheel).namelist()
    assert fnmatch.filter(names, "fastws/_codec*.so"), names
    for name in ("fastws/_codec.pxd", "fastws/_codec.pyi", "fastws/py.typed",
                 "fastws/include/fastws/mask.h", "fastws/include/fastws/utf8.h",
                 "fastws/__init__.py"):
        assert name in names, f"{name} missing from {wheel.name}"
    assert not fnmatch.filter(names, "tests/*") and not fnmatch.filter(names, "examples/*")


def test_sdist_contents(dist):
    sdist, _ = dist
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
    top = names[0].split("/")[0]
    relative = {name[len(top) + 1:] for name in names if name.startswith(top + "/")}
    for name in ("fastws/_codec.pyx", "fastws/_codec.pxd", "include/fastws/mask.h",
                 "include/fastws/utf8.h", "setup.py", "pyproject.toml", "README.md"):
        assert name in relative, f"{name} missing from {sdist.name}"
    headers = {Path(name).name for name in fnmatch.filter(relative, "include/fastws/*.h")}
    repo_headers = {path.name for path in (ROOT / "include" / "fastws").glob("*.h")}
    assert headers == repo_headers


ECHO_ROUND_TRIP = textwrap.dedent("""
    import sys
    import fastws
    from fastws import Frame, OpCode

    assert sys.prefix != sys.base_prefix, "not in the venv"
    assert fastws.__file__.startswith(sys.prefix), fastws.__file__
    assert fastws.get_include().startswith(sys.prefix), fastws.get_include()

    class Echo:
        def on_frame(self, conn, frame):
            conn.send(Frame(opcode=frame.opcode, data=frame.data))

    class Client:
        got = []
        closed = None
        def on_upgraded(self, conn):
            conn.send_text("hello from the wheel")
            conn.send_binary(bytes(range(256)) * 100)
        def on_frame(self, conn, frame):
            self.got.append((frame.opcode, bytes(frame.data)))
            if len(self.got) == 2:
                conn.close(1000, "bye")
        def on_closed(self, conn, code, reason):
            Client.closed = (code, reason)
            conn.loop.stop()

    loop = fastws.Loop()
    server = fastws.serve(Echo(), "127.0.0.1", 0, loop=loop)
    fastws.connect(f"ws://127.0.0.1:{server.port}/", Client(), loop=loop)
    loop.call_later(10, loop.stop)
    loop.run()
    server.close()
    loop.close()
    assert Client.got == [(OpCode.TEXT, b"hello from the wheel"),
                          (OpCode.BINARY, bytes(range(256)) * 100)], Client.got
    assert Client.closed == (1000, "bye"), Client.closed
    print("echo ok", fastws.__version__)
""")


def test_wheel_in_a_fresh_venv(dist, tmp_path):
    _, wheel = dist
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path, timeout=120)
    python = venv / "bin" / "python"
    # httptools comes from PyPI as the wheel's dependency; Cython and setuptools for the
    # cimport build below.
    run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "--quiet",
         str(wheel), "Cython>=3.0,<4", "setuptools>=64"], cwd=tmp_path, timeout=600)

    # cwd=tmp_path and no PYTHONPATH: the repository is not importable, only the venv's fastws.
    env_free = tmp_path / "echo.py"
    env_free.write_text(ECHO_ROUND_TRIP)
    echo = run([str(python), str(env_free)], cwd=tmp_path, timeout=60)
    assert "echo ok" in echo.stdout

    # The Cython example, built with `cimport fastws._codec` and fastws.get_include()
    # from the installed package.
    build = run([str(python), str(ROOT / "examples" / "build_cython_listener.py"),
                 str(tmp_path / "cython_build")], cwd=tmp_path, timeout=600)
    assert "unmasked frame -> (1002" in build.stdout, build.stdout
    # It cimported fastws/_codec.pxd; the only fastws that venv sees is the installed one
    # (checked by the echo script: fastws.__file__ and get_include() are under sys.prefix).
    generated = (tmp_path / "cython_build" / "cython_listener.c").read_text()
    assert '"fastws/_codec.pxd"' in generated


def test_no_system_site_packages_in_the_venv(tmp_path):
    """The venv above really is isolated: it cannot import this interpreter's packages."""
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path, timeout=120)
    result = subprocess.run([str(venv / "bin" / "python"), "-c", "import httptools"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert os.path.isfile(venv / "pyvenv.cfg")
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
