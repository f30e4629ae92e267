"""Headless Chromium (Debian's package; `make browser` installs it) for tests of what a person
looks at: a screenshot and the DOM after scripts ran. A test skips only when no Chromium is
installed, saying so."""

import shutil
import subprocess
from pathlib import Path

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
         "--disable-dev-shm-usage", "--disable-extensions", "--mute-audio"]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("Chromium is not installed and could not be (`make browser` installs it with apt-get; "
                "apt-get was unavailable or failed here)")


def _run(args: list[str], profile: Path, budget_ms: int, timeout: int) -> subprocess.CompletedProcess:
    # --virtual-time-budget lets a single-page app (MLflow's UI) fetch and render before capture.
    cmd = [chromium(), *FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def screenshot(url: str, png: Path, size=(1280, 1600), budget_ms: int = 2000, timeout: int = 120) -> Path:
    res = _run([f"--window-size={size[0]},{size[1]}", f"--screenshot={png}", url], png.parent / "chromium-profile",
               budget_ms, timeout)
    assert png.exists(), f"chromium wrote no screenshot: {res.stderr[-1500:]}"
    return png


def dump_dom(url: str, profile: Path, budget_ms: int = 2000, size=(1280, 1600), timeout: int = 120) -> str:
    res = _run([f"--window-size={size[0]},{size[1]}", "--dump-dom", url], profile, budget_ms, timeout)
    assert res.returncode == 0 and res.stdout, f"chromium --dump-dom failed: {res.stderr[-1500:]}"
    return res.stdout


def not_blank(png: Path, min_colours: int = 8) -> tuple[int, float]:
    """(distinct colours, share of non-white pixels); asserts the page drew something."""
    from PIL import Image

    img = Image.open(png).convert("RGB")
    small = img.resize((img.width // 4, img.height // 4))
    pixels = list(small.getdata())
    colours = len(set(pixels))
    ink = sum(1 for p in pixels if sum(p) < 720) / len(pixels)
    assert colours >= min_colours and ink > 0.01, f"{png} looks blank ({colours} colours, {ink:.1%} non-white)"
    return colours, ink


class Browser:
    """A headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
    JSON messages ended by NUL on fds 3/4, so no websocket client is needed), for tests that click
    and navigate as a person does. `with Browser(profile) as b: page = b.open(url)`."""

    def __init__(self, profile: Path, size=(1600, 1000)):
        import os

        self._to_chrome_r, self._to_chrome_w = os.pipe()
        self._from_chrome_r, self._from_chrome_w = os.pipe()
        fds = (self._to_chrome_r, self._from_chrome_w)

        def child_fds():  # Chromium reads commands on fd 3 and writes replies on fd 4
            read, write = os.dup(fds[0]), os.dup(fds[1])  # dups first: the pipes may sit on 3-6
            os.dup2(read, 3)
            os.dup2(write, 4)

        self.proc = subprocess.Popen(
            [chromium(), *FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
             "--remote-debugging-pipe", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(3, 4), preexec_fn=child_fds)
        os.close(self._to_chrome_r)
        os.close(self._from_chrome_w)
        self._buf = b""
        self._next_id = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        import os

        try:
            self.send("Browser.close")
        except Exception:  # already gone
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        for fd in (self._to_chrome_w, self._from_chrome_r):
            try:
                os.close(fd)
            except OSError:
                pass

    def send(self, method: str, session: str | None = None, timeout: float = 60, **params):
        import json
        import os
        import select
        import time

        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self._to_chrome_w, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._next_id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply.get("result", {})
            left = deadline - time.time()
            ready, _, _ = select.select([self._from_chrome_r], [], [], max(left, 0))
            if not ready:
                raise TimeoutError(f"Chromium did not answer {method} within {timeout} s")
            chunk = os.read(self._from_chrome_r, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buf += chunk

    def open(self, url: str) -> "Page":
        target = self.send("Target.createTarget", url=url)["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        return Page(self, session)


class Page:
    def __init__(self, browser: Browser, session: str):
        self.browser, self.session = browser, session

    def eval(self, js: str):
        """The value of a JavaScript expression in the page (promises awaited)."""
        res = self.browser.send("Runtime.evaluate", self.session, expression=js, returnByValue=True,
                                awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"{js[:80]}: {res['exceptionDetails'].get('text')}")
        return res["result"].get("value")

    def wait_for(self, js: str, timeout: float = 60, what: str = ""):
        """Poll a JavaScript expression until it is truthy; its value."""
        import time

        deadline = time.time() + timeout
        while True:
            value = self.eval(js)
            if value:
                return value
            if time.time() > deadline:
                raise AssertionError(f"waited {timeout} s for {what or js[:120]}; "
                                     f"page at {self.eval('location.href')}")
            time.sleep(0.5)

    def goto(self, url: str):
        self.browser.send("Page.navigate", self.session, url=url)

    def html(self) -> str:
        return self.eval("document.documentElement.outerHTML")
