"""Build examples/cython_listener.pyx against the installed fastws and run it.

    python examples/build_cython_listener.py [BUILD_DIR]

Needs Cython and setuptools (pip install Cython setuptools) and a C compiler. The
extension is built in BUILD_DIR (default: a temporary directory) with the setup.py below,
which is all a project of your own needs: the C include path is fastws.get_include() (for
fastws/mask.h and fastws/utf8.h), and Cython finds fastws/_codec.pxd next to the
installed package.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import time

import fastws
from fastws import OpCode, encode_frame

SETUP_PY = '''\
import os
import fastws
from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    name="cython_listener",
    ext_modules=cythonize(
        [Extension("cython_listener", ["cython_listener.pyx"],
                   include_dirs=[fastws.get_include()])],
        # the directory holding the fastws package, where fastws/_codec.pxd is
        include_path=[os.path.dirname(os.path.dirname(fastws.__file__))],
    ),
)
'''

HERE = os.path.dirname(os.path.abspath(__file__))


def build(build_dir: str) -> None:
    shutil.copy(os.path.join(HERE, "cython_listener.pyx"), build_dir)
    with open(os.path.join(build_dir, "setup.py"), "w") as f:
        f.write(SETUP_PY)
    result = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"],
                            cwd=build_dir, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        sys.exit(f"build failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")


def run(build_dir: str) -> None:
    sys.path.insert(0, build_dir)
    listener = importlib.import_module("cython_listener")

    key = b"\x37\xfa\x21\x3d"
    assert listener.mask(b"Hello", key) == fastws.mask(b"Hello", key)

    # A client's stream: masked frames, fed in awkward 7-byte chunks.
    wire = b"".join([
        encode_frame(OpCode.TEXT, "caf\u00e9", masking_key=key),
        encode_frame(OpCode.PING, b"are you there", masking_key=key),
        encode_frame(OpCode.BINARY, bytes(1000), masking_key=key),
        encode_frame(OpCode.TEXT, "last one", masking_key=key),
    ])
    stats = listener.FrameStats(expect_mask=True, max_frame_size=1 << 20)
    for i in range(0, len(wire), 7):
        stats.feed(wire[i:i + 7])
    print(f"frames {stats.frames} (data {stats.data_frames}, control {stats.control_frames}), "
          f"{stats.payload_bytes} payload bytes, last text {stats.last_text!r}")
    assert (stats.frames, stats.data_frames, stats.control_frames) == (4, 3, 1)
    assert stats.last_text == b"last one" and stats.error is None

    # 100 000 small frames in one feed: handle_frame runs with no Python call per frame.
    many = encode_frame(OpCode.BINARY, b"x" * 16, masking_key=key) * 100_000
    fast = listener.FrameStats()
    started = time.perf_counter()
    fast.feed(many)
    elapsed = time.perf_counter() - started
    print(f"100000 frames parsed in {elapsed * 1000:.1f} ms through the C callback")
    assert fast.frames == 100_000

    # A protocol violation reaches handle_error: an unmasked frame from a client.
    strict = listener.FrameStats(expect_mask=True)
    strict.feed(encode_frame(OpCode.TEXT, "not masked"))
    print("unmasked frame ->", strict.error)
    assert strict.error is not None and strict.error[0] == 1002


def main() -> None:
    if len(sys.argv) > 1:
        build_dir = sys.argv[1]
        os.makedirs(build_dir, exist_ok=True)
        build(build_dir)
        run(build_dir)
    else:
        with tempfile.TemporaryDirectory() as build_dir:
            build(build_dir)
            run(build_dir)


if __name__ == "__main__":
    main()
