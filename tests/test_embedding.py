"""Embedding the codec: a Cython extension cimports the parser and the C headers."""

import os
import subprocess
import sys
import textwrap

import fastws
from fastws import OpCode, encode_frame

LISTENER_PYX = textwrap.dedent("""
    # cython: language_level=3
    from libc.stdint cimport uint8_t, uint32_t
    from fastws._codec cimport FrameParser, fastws_mask_copy

    cdef class CountingParser(FrameParser):
        # Frames arrive through the C vtable: no Frame object, no Python call.
        cdef public list seen

        def __init__(self):
            super().__init__(expect_mask=True, max_frame_size=100)
            self.seen = []

        cdef int handle_frame(self, bint fin, int rsv, int opcode, bint masked,
                              uint32_t key, bytes payload) except -1:
            self.seen.append((opcode, fin, masked, payload))
            return 0

        cdef int handle_error(self, int code, str reason) except -1:
            self.seen.append(("error", code))
            return 0

    def mask_with_header(bytes data, bytes key):
        out = bytearray(len(data))
        fastws_mask_copy(<uint8_t *>(<char *>out), <const uint8_t *>(<char *>data),
                         len(data), <const uint8_t *>(<char *>key), 0)
        return bytes(out)
""")

SETUP_PY = textwrap.dedent("""
    import sys
    from Cython.Build import cythonize
    from setuptools import Extension, setup
    include, pxd_root = sys.argv.pop(1), sys.argv.pop(1)
    setup(
        name="listener",
        ext_modules=cythonize(
            [Extension("listener", ["listener.pyx"], include_dirs=[include])],
            include_path=[pxd_root],
        ),
    )
""")


def test_cython_extension_gets_frames_through_the_c_callback(tmp_path):
    (tmp_path / "listener.pyx").write_text(LISTENER_PYX)
    (tmp_path / "setup.py").write_text(SETUP_PY)
    pxd_root = os.path.dirname(os.path.dirname(fastws.__file__))
    build = subprocess.run(
        [sys.executable, "setup.py", fastws.get_include(), pxd_root, "build_ext", "--inplace"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr[-3000:]

    check = textwrap.dedent("""
        import listener
        from fastws import encode_frame, mask
        p = listener.CountingParser()
        wire = (encode_frame(1, b"hello", fin=False, masking_key=0x01020304)
                + encode_frame(0, b" world", masking_key=0x0A0B0C0D)
                + encode_frame(9, b"", masking_key=5)
                + encode_frame(2, b"x" * 101, masking_key=6))
        for i in range(0, len(wire), 3):
            p.feed(wire[i:i + 3])
        print(p.seen)
        print(listener.mask_with_header(b"abcdefgh" * 5, b"\\x01\\x02\\x03\\x04")
              == mask(b"abcdefgh" * 5, b"\\x01\\x02\\x03\\x04"))
    """)
    run = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    seen, masked_ok = run.stdout.strip().splitlines()
    assert seen == repr([(1, False, True, b"hello"), (0, True, True, b" world"),
                         (9, True, True, b""), ("error", 1009)])
    assert masked_ok == "True"


def test_get_include_holds_the_headers():
    include = fastws.get_include()
    assert os.path.isfile(os.path.join(include, "fastws", "mask.h"))
    assert os.path.isfile(os.path.join(include, "fastws", "utf8.h"))
    assert encode_frame(OpCode.TEXT, b"") == b"\x81\x00"
