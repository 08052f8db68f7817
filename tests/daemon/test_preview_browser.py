"""The browser preview end to end, in a real headless browser.

Debian's ``chromium`` driven by Playwright (``executable_path``: Playwright's
own browser downloads are never used). A watch daemon with the preview on a
free port stacks frames written into its capture folder; the page must show
the new image and counts without being reloaded. Screenshots (desktop, phone,
phone zoomed) go to ``$LUCKYSTACK_ARTIFACTS`` or ``tests/artifacts/``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from luckystack.daemon.config import load_settings

from daemon_helpers import DaemonThread, wait_for, write_frames

CHROMIUM = os.environ.get("LUCKYSTACK_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"

needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).is_file(),
    reason=f"Debian's chromium is not installed ({CHROMIUM} missing): "
           "apt-get install chromium (the README's test command does it)",
)

ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
WAIT_MS = 30_000

IMAGE_SHOWN = """() => {
  const i = document.getElementById('img');
  return !!i && !i.hidden && i.complete && i.naturalWidth > 0;
}"""

# A checksum of the pixels the page shows (drawn from the <img> itself).
IMAGE_HASH = """() => {
  const i = document.getElementById('img');
  const c = document.createElement('canvas');
  c.width = i.naturalWidth; c.height = i.naturalHeight;
  const g = c.getContext('2d');
  g.drawImage(i, 0, 0);
  const d = g.getImageData(0, 0, c.width, c.height).data;
  let h = 0;
  for (let k = 0; k < d.length; k++) h = (Math.imul(h, 31) + d[k]) | 0;
  return h;
}"""

# The page shows other pixels than those with checksum ``h``.
IMAGE_CHANGED = f"""(h) => ({IMAGE_SHOWN})() && ({IMAGE_HASH})() !== h"""

PLOT_INK = """() => {
  const c = document.getElementById('plot');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let k = 0; k < d.length; k += 4) if (d[k] > 150 && d[k + 3] > 0) n++;
  return n;
}"""


def artifacts_dir() -> Path:
    folder = Path(os.environ.get("LUCKYSTACK_ARTIFACTS")
                  or Path(__file__).resolve().parents[1] / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@needs_chromium
def test_page_shows_new_frames_live_without_reload(tmp_path, small_session):
    from playwright.sync_api import sync_playwright

    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    arts = artifacts_dir()
    settings = load_settings(preview={"enabled": True, "port": 0})
    with DaemonThread(inp, out, settings) as d:
        url = f"http://127.0.0.1:{d.preview.port}/"
        state = d.preview_state
        write_frames(inp, small_session.frames[:3], start=1)
        assert wait_for(lambda: state.snapshot()["frames"] == 3 and state.snapshot()["version"] > 0)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            try:
                problems: list[str] = []
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                page.on("pageerror", lambda err: problems.append(f"page error: {err}"))
                page.on("console", lambda msg: problems.append(msg.text)
                        if msg.type == "error" else None)
                page.goto(url)
                page.wait_for_function(IMAGE_SHOWN, timeout=WAIT_MS)
                page.wait_for_function(
                    "() => document.getElementById('frames').textContent === '3'", timeout=WAIT_MS)
                page.evaluate("window.__loadMarker = 'first load'")
                src = page.get_attribute("#img", "src")
                first = page.evaluate(IMAGE_HASH)
                assert src.startswith("/image/sharpened.png?v=")

                write_frames(inp, small_session.frames[3:24], start=4)  # frame 8 is black: rejected
                assert wait_for(lambda: state.snapshot()["frames"] == 24)
                # (sharpened.png may lag stacked.png while frames arrive: wait for
                # other pixels, not just for another version in the URL)
                page.wait_for_function(IMAGE_CHANGED, arg=first, timeout=WAIT_MS)
                page.wait_for_function(
                    "() => document.getElementById('frames').textContent === '24'", timeout=WAIT_MS)
                assert page.evaluate("window.__loadMarker") == "first load"  # never reloaded
                assert page.get_attribute("#img", "src") != src
                assert page.inner_text("#status") == "live"
                snap = state.snapshot()  # all 24 frames in: final
                assert snap["usable"] > snap["acceptance"]  # frames below the lucky cut
                assert page.inner_text("#rate") == f"{int(100 * snap['usable'] + 0.5)}%"
                title = page.evaluate("document.getElementById('rate').parentNode.title")
                assert f"{snap['below_cut']} below the lucky cut" in title, title
                assert page.inner_text("#quality") not in ("", "\u2013")
                page.wait_for_function(f"() => ({PLOT_INK})() > 50", timeout=WAIT_MS)
                page.screenshot(path=str(arts / "preview_e2e.png"), full_page=True)
                assert not problems, problems

                # A phone: responsive layout, tap to zoom and back.
                phone = browser.new_context(viewport={"width": 390, "height": 844},
                                            device_scale_factor=2, is_mobile=True, has_touch=True)
                mobile = phone.new_page()
                mobile.goto(url)
                mobile.wait_for_function(IMAGE_SHOWN, timeout=WAIT_MS)
                mobile.wait_for_function(
                    "() => document.getElementById('frames').textContent === '24'", timeout=WAIT_MS)
                assert mobile.evaluate("document.documentElement.scrollWidth") <= 390
                box = mobile.locator("#img").bounding_box()
                assert box is not None and 300 <= box["width"] <= 390
                mobile.screenshot(path=str(arts / "preview_phone.png"), full_page=True)
                mobile.tap("#view")
                mobile.wait_for_function(
                    "() => document.getElementById('view').classList.contains('zoom')",
                    timeout=WAIT_MS)
                assert mobile.evaluate("document.getElementById('img').clientWidth") > box["width"]
                mobile.screenshot(path=str(arts / "preview_phone_zoomed.png"))
                mobile.tap("#view")
                mobile.wait_for_function(
                    "() => document.getElementById('view').classList.contains('fit')",
                    timeout=WAIT_MS)
                phone.close()
            finally:
                browser.close()
    for name in ("preview_e2e.png", "preview_phone.png", "preview_phone_zoomed.png"):
        assert (arts / name).stat().st_size > 0


def test_ci_runs_the_readme_command_which_installs_chromium():
    """CI must run the browser test: its command (the README's) installs Chromium."""
    repo = Path(__file__).resolve().parents[2]
    ci = (repo / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in (repo / "README.md").read_text()
    assert "apt-get install -y --no-install-recommends chromium" in ci
    assert ci.endswith(".venv/bin/pytest")
