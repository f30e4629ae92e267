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
