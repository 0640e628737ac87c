"""Shared machinery for the codec benchmarks in this folder.

* ``bench_run`` fixture: calibrates a callable once, then runs it through
  ``benchmark.pedantic`` with a bounded number of rounds, so the whole suite
  finishes in a couple of minutes even on a small machine.  The time budget
  per benchmark is ``--bench-budget`` seconds (default 0.5).  The cyclic GC
  stays enabled while timing, as in users' programs; ``--bench-no-gc``
  disables it to separate codec cost from collector cost.
* After each run the derived figures (GB/s, M frames/s, computed from the
  median) are stored in the benchmark's ``extra_info`` (so they end up in
  ``--benchmark-json`` / ``--benchmark-autosave`` files) and collected for a
  plain-text summary printed at the end of the session.
* ``build_cython`` fixture: compiles a benchmark's own Cython module (the
  cdef consumers of bench/cython/) once per content, cached in .pytest_cache.
"""

from __future__ import annotations

import gc
import hashlib
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

# A round shorter than this is repeated (``iterations``) so the timer's
# resolution and per-round overhead stay negligible.
MIN_ROUND_SECONDS = 100e-6
MIN_ROUNDS = 5
MAX_ROUNDS = 2000

_RESULTS_KEY = pytest.StashKey[list]()


@dataclass
class Result:
    kind: str  # "mask", "parse", "parse-c" or "utf8"
    impl: str
    size_label: str
    size: int
    median: float  # seconds per call
    bytes_per_call: int
    frames_per_call: int | None

    @property
    def gbps(self) -> float:
        return self.bytes_per_call / self.median / 1e9

    @property
    def mfps(self) -> float | None:
        if self.frames_per_call is None:
            return None
        return self.frames_per_call / self.median / 1e6


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fastws bench")
    group.addoption(
        "--bench-budget",
        type=float,
        default=0.5,
        help="approximate seconds spent timing each benchmark (default 0.5); "
        f"rounds are clamped to [{MIN_ROUNDS}, {MAX_ROUNDS}]",
    )
    group.addoption(
        "--bench-no-gc",
        action="store_true",
        default=False,
        help="disable the cyclic garbage collector while timing (by default it "
        "stays on, as in real programs: per-frame GC-tracked objects cost there)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_RESULTS_KEY] = []


def _calibrate(fn) -> float:
    """Seconds for one call of fn (best of a few, after one warm-up call)."""
    fn()
    best = math.inf
    deadline = time.perf_counter() + 0.05
    for _ in range(1000):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        if time.perf_counter() > deadline:
            break
    return max(best, 1e-9)


@pytest.fixture
def bench_run(benchmark, request):
    """Return ``run(fn, *, kind, impl, size_label, size, bytes_per_call,
    frames_per_call=None)`` that times fn with bounded rounds."""
    budget = request.config.getoption("--bench-budget")
    keep_gc = not request.config.getoption("--bench-no-gc")
    results = request.config.stash[_RESULTS_KEY]

    def run(fn, *, kind, impl, size_label, size, bytes_per_call, frames_per_call=None):
        benchmark.extra_info.update(
            kind=kind,
            impl=impl,
            size=size,
            bytes_per_call=bytes_per_call,
        )
        if frames_per_call is not None:
            benchmark.extra_info["frames_per_call"] = frames_per_call

        if not benchmark.enabled:  # --benchmark-disable: run it once, untimed
            benchmark(fn)
            return
        # With the collector on, parsers that create GC-tracked objects per
        # frame pay for collections; users pay that too, so it is on by default.
        gc_was_enabled = gc.isenabled()
        gc_on = keep_gc and gc_was_enabled
        benchmark.extra_info["gc_enabled"] = gc_on
        gc.collect()
        if not gc_on:
            gc.disable()
        try:
            per_call = _calibrate(fn)
            iterations = max(1, math.ceil(MIN_ROUND_SECONDS / per_call))
            rounds = int(budget / (per_call * iterations))
            rounds = min(MAX_ROUNDS, max(MIN_ROUNDS, rounds))
            benchmark.pedantic(fn, rounds=rounds, iterations=iterations, warmup_rounds=1)
        finally:
            if gc_was_enabled:
                gc.enable()

        stats = getattr(benchmark, "stats", None)
        if stats is None:
            return
        res = Result(
            kind=kind,
            impl=impl,
            size_label=size_label,
            size=size,
            median=stats.stats.median,
            bytes_per_call=bytes_per_call,
            frames_per_call=frames_per_call,
        )
        benchmark.extra_info["median_GBps"] = round(res.gbps, 4)
        if res.mfps is not None:
            benchmark.extra_info["median_Mframes_per_s"] = round(res.mfps, 4)
        results.append(res)

    return run


# Built as setup.py builds fastws' own extensions.
CYTHON_DIRECTIVES = {"language_level": "3", "boundscheck": False, "wraparound": False,
                     "cdivision": True}

_SETUP_PY = """\
import json, sys
from Cython.Build import cythonize
from setuptools import Extension, setup
config = json.loads(sys.argv.pop(1))
setup(name=config["name"], ext_modules=cythonize(
    [Extension(config["name"], [config["source"]], include_dirs=config["include_dirs"],
               extra_compile_args=["-O3"])],
    include_path=config["include_path"], compiler_directives=config["directives"]))
"""


@pytest.fixture(scope="session")
def build_cython(request, tmp_path_factory):
    """Return ``build(pyx, *, include_path, include_dirs=(), depends=(), required)``,
    which compiles bench/cython/<name>.pyx into an extension module and imports it.

    A build is kept in pytest's cache under a hash of everything it depends on
    (the source, the .pxd files it cimports, the directives, the Python and
    Cython versions), so only the first run pays for the C compiler.  Without
    Cython the caller's case is skipped; a failed build fails it when
    ``required``, else skips it (a peer's other release may declare other types).
    """
    cache = getattr(request.config, "cache", None)
    root = Path(cache.mkdir("fastws-bench-cython")) if cache else tmp_path_factory.mktemp("cy")
    modules = {}

    def build(pyx, *, include_path, include_dirs=(), depends=(), required):
        try:
            import Cython
        except ImportError:
            pytest.skip("the C-level cases build Cython code: pip install Cython setuptools")
        name = pyx.stem
        digest = hashlib.sha256()
        for path in (pyx, *depends):
            digest.update(path.read_bytes())
        digest.update(repr((CYTHON_DIRECTIVES, sys.version, Cython.__version__)).encode())
        folder = root / f"{name}-{digest.hexdigest()[:16]}"
        target = folder / (name + sysconfig.get_config_var("EXT_SUFFIX"))
        if target not in modules:
            if not target.exists():
                _compile(pyx, folder, list(include_path), list(include_dirs), required)
            spec = importlib.util.spec_from_file_location(name, target)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            modules[target] = module
        return modules[target]

    return build


def _compile(pyx, folder, include_path, include_dirs, required) -> None:
    # Built aside, then renamed into place: a concurrent run never imports half a build.
    work = Path(tempfile.mkdtemp(prefix=f"{pyx.stem}-", dir=folder.parent))
    try:
        shutil.copy(pyx, work)
        config = {"name": pyx.stem, "source": pyx.name, "include_path": include_path,
                  "include_dirs": include_dirs, "directives": CYTHON_DIRECTIVES}
        result = subprocess.run(
            [sys.executable, "-c", _SETUP_PY, json.dumps(config), "build_ext", "--inplace"],
            cwd=work, capture_output=True, text=True, timeout=900,
        )
        if result.returncode != 0:
            message = f"building {pyx.name} failed:\n{result.stderr[-3000:]}"
            if required:
                pytest.fail(message)
            pytest.skip(message)
        try:
            os.rename(work, folder)
        except OSError:  # another run finished the same build first
            pass
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _fmt_time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:8.2f} {unit}"
    return f"{seconds / 1e-9:8.1f} ns"


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    results: list[Result] = config.stash.get(_RESULTS_KEY, [])
    if not results:
        return
    tr = terminalreporter
    gc_note = (
        "cyclic GC disabled while timing (--bench-no-gc)"
        if config.getoption("--bench-no-gc")
        else "cyclic GC enabled while timing"
    )
    order = {"16B": 0, "125B": 1, "1KiB": 2, "64KiB": 3, "1MiB": 4}
    titles = {
        "parse": "parse: masked client->server frames, each payload (bytes) to Python code "
        "(GB/s = payload bytes / median)",
        "parse-c": "parse-c: the same frames, each payload (bytes) to a cdef subclass "
        "through the C vtable",
        "mask": "mask: new masked buffer per call (GB/s = input bytes / median)",
        "utf8": "utf8: validate/decode (GB/s = input bytes / median)",
    }
    for kind in ("parse", "parse-c", "mask", "utf8"):
        rows = [r for r in results if r.kind == kind]
        if not rows:
            continue
        rows.sort(key=lambda r: (order.get(r.size_label, 99), r.size, -r.gbps))
        w = max(len("implementation"), *(len(r.impl) for r in rows))
        tr.write_sep("-", f"fastws bench summary: {titles[kind]}")
        tr.write_line(f"(median of the timed rounds; 1 GB = 1e9 bytes; {gc_note})")
        if kind.startswith("parse"):
            tr.write_line(
                f"{'size':>6}  {'implementation':<{w}} {'frames/call':>11} "
                f"{'median':>11} {'M frames/s':>11} {'GB/s':>8}"
            )
            for r in rows:
                tr.write_line(
                    f"{r.size_label:>6}  {r.impl:<{w}} {r.frames_per_call:>11} "
                    f"{_fmt_time(r.median):>11} {r.mfps:>11.3f} {r.gbps:>8.3f}"
                )
        else:
            tr.write_line(f"{'size':>6}  {'implementation':<{w}} {'median':>11} {'GB/s':>8}")
            for r in rows:
                tr.write_line(
                    f"{r.size_label:>6}  {r.impl:<{w}} {_fmt_time(r.median):>11} {r.gbps:>8.3f}"
                )
