"""The expert report in a real browser: headless Chromium opens index + one expert page from file://.

Checks: no console errors, no uncaught exceptions, no failed resource loads; plotly rendered its
plots (``.plot-container`` / ``svg.main-svg``); the index table sorts and filters; token tooltips
work; screenshots are taken (kept under $MONET_REPORT_SCREENSHOTS when set).

Chromium is driven through the DevTools protocol over ``--remote-debugging-pipe`` (NUL-separated
JSON on file descriptors 3 and 4), so no websocket client or other package is needed. Install
the browser with ``scripts/install_browser.sh`` (Debian ``chromium``); without it the test skips
and says why.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("one_thread")]


BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio", "--window-size=1280,1000")


def find_chromium() -> str | None:
    override = os.environ.get("MONET_CHROMIUM")
    if override:
        return override if Path(override).exists() else shutil.which(override)
    for name in BROWSER_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class DevTools:
    """A minimal Chrome DevTools Protocol client over --remote-debugging-pipe."""

    def __init__(self, chromium: str, profile: Path):
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def wire_fds() -> None:  # in the child: its fd 3 reads our commands, fd 4 carries replies
            read_end, write_end = os.dup(to_child_r), os.dup(from_child_w)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        self._stderr = open(profile.parent / "chromium.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                      "--remote-debugging-pipe", "about:blank"],
                                     preexec_fn=wire_fds, close_fds=False, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self._stderr)
        os.close(to_child_r)
        os.close(from_child_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []
        self.session: str | None = None

    # ---- transport
    def send(self, method: str, params: dict | None = None, timeout: float = 20.0, session: bool = True) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        reply = self._read_until(lambda m: m.get("id") == message["id"], timeout)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def _read_until(self, predicate, timeout: float) -> dict:
        end = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                if predicate(message):
                    return message
                self.events.append(message)
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError("no reply from chromium")
            ready, _, _ = select.select([self._from_child], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(self._from_child, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed the DevTools pipe")
                self._buffer += chunk

    def wait_event(self, method: str, timeout: float = 20.0) -> dict:
        for k, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(k)
        return self._read_until(lambda m: m.get("method") == method, timeout)

    # ---- page helpers
    def open_page(self) -> None:
        try:  # the first reply waits for the browser to start (slow on a busy machine)
            targets = self.send("Target.getTargets", session=False, timeout=90)["targetInfos"]
        except (TimeoutError, RuntimeError, OSError) as err:
            raise RuntimeError(f"chromium did not start ({err}); its log ends with:\n{self.log_tail()}") from err
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.send("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True},
                                 session=False)["sessionId"]
        for domain in ("Runtime.enable", "Log.enable", "Page.enable"):
            self.send(domain)

    def log_tail(self, n: int = 2000) -> str:
        self._stderr.flush()
        return Path(self._stderr.name).read_bytes()[-n:].decode(errors="replace")

    def navigate(self, url: str) -> None:
        self.events.clear()
        self.send("Page.navigate", {"url": url})
        self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"condition never held: {expression}")

    def problems(self) -> list[str]:
        """Console errors/warnings, uncaught exceptions and failed loads seen since navigation."""
        self._read_pending()
        out = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning", "assert"):
                out.append(f"console.{params['type']}: " + " ".join(str(a.get("value", a.get("description")))
                                                                   for a in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                out.append(f"exception: {details.get('text')} {details.get('exception', {}).get('description', '')}")
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") in ("error", "warning"):
                entry = params["entry"]
                out.append(f"log.{entry['level']}: {entry.get('text')} {entry.get('url', '')}")
        return out

    def _read_pending(self) -> None:
        while select.select([self._from_child], [], [], 0.05)[0]:
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                break
            self._buffer += chunk
        while b"\0" in self._buffer:
            raw, self._buffer = self._buffer.split(b"\0", 1)
            self.events.append(json.loads(raw))

    def screenshot(self, path: Path, max_height: int = 5000) -> Path:
        metrics = self.send("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        clip = {"x": 0, "y": 0, "width": 1280, "height": min(max_height, int(size["height"])), "scale": 1}
        shot = self.send("Page.captureScreenshot", {"format": "png", "clip": clip, "captureBeyondViewport": True})
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def close(self) -> None:
        try:
            self.send("Browser.close", session=False, timeout=5)
        except Exception:  # already gone
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        self._stderr.close()


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        pytest.skip("no chromium found (looked for " + ", ".join(BROWSER_NAMES) + " and $MONET_CHROMIUM): "
                    "run `bash scripts/install_browser.sh` (Debian package chromium)")
    return path


@pytest.fixture
def report_dir(released_folder, tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from test_expert_report import PLANTED_TEXTS, tiny_model

    from monet_interp.analyses import report as R

    model = tiny_model(released_folder)
    docs, windows, _ = R.plan_report_windows(model, PLANTED_TEXTS, ctx_len=24)
    routing = R.routing_stats_for(model, PLANTED_TEXTS, ctx_len=24)
    chosen = [ref for refs in R.select_top_per_label(routing, 2, min_fires=2).values() for ref in refs]
    chosen = sorted(set(chosen) | {R.ExpertRef(1, 0, 0)})
    pages = R.build_report_data(model, windows, chosen, documents=docs, top_k=6)
    out = tmp_path / "report"
    R.write_report(out, pages, {"model": "tiny random MONET", "facts": {"experts": len(pages)}})
    return out, pages


def test_report_renders_in_chromium(chromium, report_dir, tmp_path):
    out, pages = report_dir
    keep = os.environ.get("MONET_REPORT_SCREENSHOTS")
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    browser = DevTools(chromium, profile)
    try:
        browser.open_page()

        # ---- index: every expert listed, sortable, filterable
        browser.navigate((out / "index.html").resolve().as_uri())
        assert browser.problems() == []
        slugs = browser.evaluate("Array.from(document.querySelectorAll('#experts tbody tr')).map(r => r.dataset.slug)")
        assert sorted(slugs) == sorted(p["ref"]["slug"] for p in pages)
        hrefs = browser.evaluate("Array.from(document.querySelectorAll('#experts tbody a')).map(a => a.href)")
        assert all(Path(h.removeprefix("file://")).is_file() for h in hrefs)
        density_col = 8
        browser.evaluate(f"document.querySelectorAll('#experts thead th')[{density_col}].click()")
        browser.evaluate(f"document.querySelectorAll('#experts thead th')[{density_col}].click()")  # descending
        shown = browser.evaluate("Array.from(document.querySelectorAll('#experts tbody tr'))"
                                 f".map(r => Number(r.cells[{density_col}].dataset.v))")
        assert shown == sorted(shown, reverse=True)
        browser.evaluate("(() => { const f = document.getElementById('filter-group'); f.value = '1';"
                         " f.dispatchEvent(new Event('change')); })()")
        visible = browser.evaluate("Array.from(document.querySelectorAll('#experts tbody tr'))"
                                   ".filter(r => r.style.display !== 'none').map(r => r.dataset.group)")
        assert visible and set(visible) == {"1"}
        assert browser.evaluate("document.getElementById('shown-count').textContent") == str(len(visible))
        browser.evaluate("(() => { const f = document.getElementById('filter-group'); f.value = '';"
                         " f.dispatchEvent(new Event('change')); })()")
        index_png = browser.screenshot(tmp_path / "index.png")

        # ---- one expert page: plots rendered, sections present, tooltips work
        page = max(pages, key=lambda p: p["summary"]["n_fires"])
        browser.navigate((out / "experts" / f"{page['ref']['slug']}.html").resolve().as_uri())
        n_plots = browser.wait_for("document.querySelectorAll('.plot-container svg.main-svg').length >= 3 && "
                                   "document.querySelectorAll('.plot-container').length")
        assert n_plots == 3
        assert browser.evaluate("document.querySelectorAll('#plot-histogram .bars path, #plot-histogram .point path')"
                                ".length") > 0
        assert browser.evaluate("!!document.querySelector('#plot-histogram .ytick')")
        y_type = browser.evaluate("document.getElementById('plot-histogram').layout.yaxis.type")
        assert y_type == "log"
        ids = browser.evaluate("Array.from(document.querySelectorAll('section[id]')).map(s => s.id)")
        for section in ("header", "histogram", "heads", "top-contexts", "intervals", "labels", "logits",
                        "ablation", "neighbours"):
            assert section in ids
        n_tokens = browser.evaluate("document.querySelectorAll('#top-contexts .tok').length")
        assert n_tokens == sum(len(ex["tokens"]) for ex in page["top_contexts"])
        tip = browser.evaluate("(() => { const t = document.querySelector('#top-contexts .tok.focus');"
                               " t.dispatchEvent(new MouseEvent('mouseover', {bubbles: true}));"
                               " return document.querySelector('.tip').textContent; })()")
        assert "score" in tip and "head 0" in tip
        assert browser.problems() == []
        expert_png = browser.screenshot(tmp_path / "expert.png")
    finally:
        browser.close()
    for png in (index_png, expert_png):
        assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        for png in (index_png, expert_png):
            shutil.copy(png, Path(keep) / png.name)
