"""The dashboard in a real browser: Debian's Chromium (``/usr/bin/chromium``), headless,
driven by Playwright (no browser download: ``executable_path``).

The API runs under uvicorn on 127.0.0.1 (a free port, in a thread) on a temporary SQLite
store with waiting plans and finished runs; the page must show the waiting plans and
draw its charts, ask nothing of any other host, log no error, and its screenshot must
show them (PNG decoded here, no imaging library).

Without Chromium these tests fail (they are not skipped): ``make install`` installs it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import struct
import threading
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import uvicorn
from fastapi import FastAPI
from playwright.async_api import Browser, Page, async_playwright

from tests.api.test_metrics_routes import build_app, filled_store_url

CHROMIUM = os.environ.get("PLANSMITH_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # tests may run as root
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
READY_TIMEOUT_MS = 20_000

# the page's colours (api/static/dashboard.css)
SUCCESS = (0x2F, 0x9E, 0x6B)
QUALITY = (0x3D, 0x6F, 0xD6)


def chromium_path() -> str:
    path = CHROMIUM if os.path.isabs(CHROMIUM) else shutil.which(CHROMIUM)
    if not path or not os.access(path, os.X_OK):
        pytest.fail(
            f"Chromium is not installed at {CHROMIUM}: the dashboard tests need Debian's "
            "`chromium` package. `make install` installs it (target browser-deps: "
            "apt-get install chromium, as root), or set PLANSMITH_CHROMIUM to a Chromium.",
            pytrace=False,
        )
    return path


@contextlib.contextmanager
def uvicorn_serving(app: FastAPI) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 (a free port) in a thread; stopped on exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive(), "uvicorn stopped at start-up"
            assert time.monotonic() < deadline, "uvicorn did not start within 20s"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"


@contextlib.asynccontextmanager
async def browser() -> AsyncIterator[Browser]:
    path = chromium_path()
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


class Watch:
    """What a page did: requests to other origins, console errors, page errors."""

    def __init__(self, page: Page, origin: str):
        self.foreign: list[str] = []
        self.errors: list[str] = []
        host = urlsplit(origin).netloc

        def on_request(req: Any) -> None:
            url = urlsplit(req.url)
            if url.scheme not in ("data", "about") and url.netloc != host:
                self.foreign.append(req.url)

        page.on("request", on_request)
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))


async def open_dashboard(page: Page, base: str, fragment: str = "") -> float:
    started = time.perf_counter()
    await page.goto(f"{base}/dashboard{fragment}")
    # (locators, not wait_for_function: the page's CSP forbids the eval it needs)
    await page.locator("body:not([data-state=loading])").wait_for(
        state="attached", timeout=READY_TIMEOUT_MS
    )
    return time.perf_counter() - started


async def state(page: Page) -> str | None:
    return await page.locator("body").get_attribute("data-state")


# --- PNG, decoded by hand -------------------------------------------------------------


def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit RGB or RGBA PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width, height, channels = 8, b"", 0, 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and color in (2, 6), (depth, color)
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        flt, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if flt == 1:
                line[i] = (line[i] + a) & 0xFF
            elif flt == 2:
                line[i] = (line[i] + b) & 0xFF
            elif flt == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif flt == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, rows


def colours(png: bytes) -> tuple[int, int, dict[tuple[int, int, int], int]]:
    width, height, rows = decode_png(png)
    channels = len(rows[0]) // width
    seen: dict[tuple[int, int, int], int] = {}
    for row in rows:
        for x in range(0, len(row), channels):
            px = (row[x], row[x + 1], row[x + 2])
            seen[px] = seen.get(px, 0) + 1
    return width, height, seen


def near(seen: dict[tuple[int, int, int], int], rgb: tuple[int, int, int], tol: int = 12) -> int:
    return sum(n for px, n in seen.items() if all(abs(px[i] - rgb[i]) <= tol for i in range(3)))


# --- tests ----------------------------------------------------------------------------


async def test_dashboard_shows_waiting_plans_and_trends(tmp_path: Path) -> None:
    url = filled_store_url(tmp_path)
    with uvicorn_serving(build_app(url)) as base:
        async with browser() as b:
            page = await b.new_page(viewport={"width": 1280, "height": 900})
            watch = Watch(page, base)
            load_s = await open_dashboard(page, base)
            assert await state(page) == "ready"

            # the plans waiting for a person, with what they wait for
            waiting = page.locator("#waiting tbody tr")
            assert await waiting.count() == 2
            ids = [await waiting.nth(i).get_attribute("data-plan-id") for i in range(2)]
            assert ids == ["delta", "eps"]
            text = await page.locator("#waiting").inner_text()
            assert "plan approval" in text and "step approval" in text and "ship it?" in text
            assert await page.locator("#waiting-count").inner_text() == "2"
            assert await page.locator("#tile-waiting .value").inner_text() == "2"

            # charts: lines and points for the trends, bars for agents, runs and tools
            assert await page.locator("#trend-chart path.series.success").count() == 1
            assert await page.locator("#trend-chart path.series.quality").count() == 1
            assert await page.locator("#trend-chart circle.point").count() >= 6
            d = await page.locator("#trend-chart path.series.success").get_attribute("d")
            assert d is not None and d.count("L") >= 1
            assert await page.locator("#agents-chart rect.bar").count() >= 5
            assert await page.locator("#runs-chart rect.bar").count() >= 3
            assert await page.locator("#tools-chart rect.bar").count() == 3
            agents = await page.locator("#agents-chart").inner_text()
            assert "bot-a" in agents and "bot-b" in agents and "(no agent)" in agents
            plans = await page.locator("#plans").inner_text()
            assert "alpha" in plans and "0.93" in plans  # alpha's quality, 0.925

            # the screenshot check: the page and its charts are really drawn
            shot = tmp_path / "dashboard.png"
            await page.screenshot(path=str(shot), full_page=True)
            width, height, seen = colours(shot.read_bytes())
            assert width == 1280 and height >= 900
            assert len(seen) > 50, "the page looks blank"
            chart = await page.locator("#trend-chart svg").screenshot()
            w, h, seen = colours(chart)
            assert w > 300 and h > 100
            assert len(seen) > 20, "the trend chart looks blank"
            assert near(seen, SUCCESS) > 50 and near(seen, QUALITY) > 50
            bars = await page.locator("#agents-chart svg").screenshot()
            _, _, seen = colours(bars)
            assert near(seen, SUCCESS) > 200, "no success bars in the agents chart"

            assert watch.foreign == [], "the page asked another host"
            assert watch.errors == [], watch.errors
            assert load_s < 10, f"the dashboard took {load_s:.1f}s"


async def test_dashboard_on_an_empty_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    with uvicorn_serving(build_app(url)) as base:
        async with browser() as b:
            page = await b.new_page()
            watch = Watch(page, base)
            await open_dashboard(page, base)
            assert await state(page) == "ready"
            assert "Nothing is waiting for a person." in await page.locator("#waiting").inner_text()
            assert "No finished runs yet." in await page.locator("#agents-chart").inner_text()
            assert "No run finished" in await page.locator("#trend-chart").inner_text()
            assert "No plan has run yet." in await page.locator("#plans").inner_text()
            assert await page.locator("svg").count() == 0
            assert watch.errors == [] and watch.foreign == []


async def test_dashboard_with_api_keys(tmp_path: Path) -> None:
    url = filled_store_url(tmp_path)
    with uvicorn_serving(build_app(url, api_keys="s3cr3t:alice")) as base:
        async with browser() as b:
            page = await b.new_page()
            await open_dashboard(page, base)
            assert await state(page) == "need-key"
            assert await page.locator("#key-form").is_visible()

            # a key typed in the form
            await page.fill("#key-input", "wrong")
            await page.click("#key-form button")
            await page.locator("#key-error", has_text="refused").wait_for()
            assert await page.locator("#key-error").inner_text() == "that key was refused"
            await page.fill("#key-input", "s3cr3t")
            await page.click("#key-form button")
            await page.locator("body[data-state=ready]").wait_for(state="attached")
            assert await page.locator("#waiting tbody tr").count() == 2
            assert not await page.locator("#key-form").is_visible()

            # or handed over in the fragment, which leaves the address bar
            fresh = await b.new_page()
            await open_dashboard(fresh, base, "#key=s3cr3t")
            assert await state(fresh) == "ready"
            assert fresh.url == f"{base}/dashboard"
            assert await fresh.locator("#waiting tbody tr").count() == 2
