"""A short, bounded run of each fuzz target in fuzz/ (the long runs are documented there).

A crash or a broken invariant makes the target exit non-zero and print the input;
such inputs become regression tests in test_codec.py / test_http.py.
"""

import os
import re
import resource
import subprocess
import sys

import pytest

from fastws import OpCode, encode_frame

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytest.importorskip("atheris", reason="atheris is in the test extra")


def seed_corpus(tmp_path, target):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    if target == "fuzz_frames.py":
        seeds = [
            b"\x07" + encode_frame(OpCode.TEXT, "héllo wörld", masking_key=0x01020304),
            b"\x03" + encode_frame(OpCode.TEXT, b"frag", fin=False, masking_key=5)
            + encode_frame(OpCode.PING, b"p", masking_key=6)
            + encode_frame(OpCode.CONTINUATION, b"ment", masking_key=7),
            b"\x20" + encode_frame(OpCode.BINARY, b"x" * 300, masking_key=9),
            b"\x01" + encode_frame(OpCode.CLOSE, b"\x03\xe8bye", masking_key=11),
        ]
    else:
        seeds = [b"\x10\x00", b"\x05\x01GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                 b"\x40\x00POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"3\r\nabc\r\n0\r\n\r\n"]
    for i, seed in enumerate(seeds):
        (corpus / f"seed{i}").write_bytes(seed)
    return str(corpus)


@pytest.mark.parametrize("target", ["fuzz_frames.py", "fuzz_http.py"])
def test_fuzz_target_short_run(tmp_path, target):
    # libFuzzer's memory limit (2 GiB by default) reads the process's peak RSS, which Linux
    # carries over from this process through fork and exec: the target gets 2 GiB more
    # than the test process has ever used, whatever ran before it in this worker.
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    run = subprocess.run(
        [sys.executable, os.path.join(ROOT, "fuzz", target), "-runs=4000", "-seed=12345",
         "-max_len=2048", f"-rss_limit_mb={peak_mb + 2048}", seed_corpus(tmp_path, target)],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    # libFuzzer may count a few runs more than asked (re-running a unit it minimised).
    done = re.search(r"Done (\d+) runs", run.stderr)
    assert done is not None and int(done.group(1)) >= 4000, run.stderr[-2000:]
