"""The command line's options: what `python -m fastws ... --help` promises is what it parses."""

from __future__ import annotations

import pytest

from fastws import Loop
from fastws.__main__ import build_parser


@pytest.mark.parametrize("command", [["echo"], ["client", "ws://127.0.0.1:1/"]])
def test_busy_poll_option(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    assert parser.parse_args(command).busy_poll == Loop.DEFAULT_BUSY_POLL * 1e6
    assert parser.parse_args([*command, "--busy-poll", "0"]).busy_poll == 0
    assert parser.parse_args([*command, "--busy-poll", "100"]).busy_poll == 100
    for bad in ("-1", "nan", "1e9", "fast"):
        with pytest.raises(SystemExit):
            parser.parse_args([*command, "--busy-poll", bad])
        assert "--busy-poll" in capsys.readouterr().err
