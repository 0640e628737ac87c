"""Headless Chromium against uvicorn running tests/asgi_app.py with
`--ws fastws.uvicorn:WebSocketProtocol`: the page of tests/test_browser.py (text and binary
messages of every size and kind, each echo compared, a clean 1000 close), with and without
permessage-deflate. Skipped, as test_browser.py is, when no Chromium is installed."""

from __future__ import annotations

import json

import pytest
from test_browser import CHROMIUM, PAGE, Chromium, PageServer, check_echoes
from test_uvicorn import Uvicorn

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (apt-get install -y chromium; .ci/run does)")

RESULT_TIMEOUT = 60.0


@pytest.mark.parametrize("deflate", [True, False], ids=["deflate", "no-deflate"])
def test_chromium_echo_through_uvicorn(tmp_path, deflate):
    flags = [] if deflate else ["--ws-per-message-deflate", "false"]
    server = Uvicorn(tmp_path / "uvicorn.log", "uvloop", *flags)
    try:
        page = PageServer(PAGE % {"ws_url": json.dumps(f"ws://127.0.0.1:{server.port}/echo")})
        try:
            browser = Chromium(page.url, tmp_path)
            try:
                got = page.received.wait(RESULT_TIMEOUT)
            finally:
                browser.stop()
            assert got, (f"no report from the page; chromium output:\n{browser.output()}\n"
                         f"uvicorn output:\n{server.output()}")
            result = page.result
        finally:
            page.stop()
    finally:
        server.stop()
    assert result is not None
    extensions = result["extensions"] or ""
    assert ("permessage-deflate" in extensions) == deflate, extensions
    check_echoes(result)
    assert "Traceback" not in server.output(), server.output()
