"""Browser tests' plumbing: Playwright driving the system's chromium (Debian's package; Playwright's own browser
download is never used: no internet here), numbered screenshots kept as test artifacts, and the checks a page's
images need (decoded, not merely present)."""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Frame, Page

REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS_DIR = REPO_ROOT / "test-artifacts" / "browser"
# Headless on a shared CI box: no sandbox (root), no GPU, and nothing that phones home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "/usr/bin/chromium")


def chromium_executable() -> str | None:
    """The chromium to drive: ``$MLPIPELINE_CHROMIUM`` if set, else the system's (Debian: ``apt-get install
    chromium``)."""
    configured = os.environ.get("MLPIPELINE_CHROMIUM")
    if configured:
        return configured if Path(configured).is_file() else None
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def skip_loudly(reason: str) -> None:
    """Skip, and say why where nobody can miss it (stderr as well as pytest's summary)."""
    print(f"\n*** BROWSER TESTS SKIPPED: {reason} ***", file=sys.stderr, flush=True)
    pytest.skip(reason)


def require_chromium() -> str:
    """The chromium executable, with Playwright importable; else the test skips, loudly, saying what is missing."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        skip_loudly(f"playwright is not installed ({exc}); it is in requirements.lock: make test installs it")
    executable = chromium_executable()
    if executable is None:
        configured = os.environ.get("MLPIPELINE_CHROMIUM")
        where = f"MLPIPELINE_CHROMIUM={configured} is not a file" if configured else "no chromium on PATH"
        skip_loudly(f"{where} (install it: apt-get install -y chromium; .ci/run does)")
    return executable


@contextmanager
def chromium_browser(executable: str) -> Iterator[Browser]:
    """A headless chromium (``executable``, see :func:`require_chromium`) under Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Screenshots:
    """Numbered full-page screenshots of one test, under ``test-artifacts/browser/<test>/``."""

    directory: Path
    taken: list[Path] = field(default_factory=list)

    @classmethod
    def for_test(cls, test_name: str) -> Screenshots:
        directory = ARTIFACTS_DIR / re.sub(r"[^A-Za-z0-9_.-]+", "_", test_name)
        if directory.exists():
            shutil.rmtree(directory)  # only this test's previous shots
        directory.mkdir(parents=True)
        print(f"\nbrowser screenshots: {directory}", flush=True)
        return cls(directory)

    def take(self, page: Page, step: str) -> Path:
        path = self.directory / f"{len(self.taken) + 1:02d}-{step}.png"
        page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)
        return path


def undecoded_images(frame: Page | Frame) -> list[str]:
    """The ``<img>`` elements of a page or frame that did not decode (their ``src``, shortened); images are
    scrolled into view first so lazy ones load."""
    return frame.evaluate(
        """async () => {
            const images = Array.from(document.images);
            for (const image of images) {
                image.scrollIntoView();
                try { await image.decode(); } catch (error) { /* reported below as undecoded */ }
            }
            return images
                .filter(image => !(image.complete && image.naturalWidth > 0 && image.naturalHeight > 0))
                .map(image => (image.getAttribute('src') || '').slice(0, 80));
        }"""
    )


def screenshot_report_top(report_html: Path, out_png: Path, *, through_section: str = "champion") -> Path:
    """The top of a run's report as chromium renders it, 1000 px wide, down to the end of ``through_section``,
    as a palette PNG small enough for the README (``python -m tests.browser_support <report.html> <out.png>``)."""
    from PIL import Image

    with chromium_browser(require_chromium()) as browser:
        page = browser.new_page(viewport={"width": 1000, "height": 800}, device_scale_factor=1)
        page.goto(report_html.resolve().as_uri())
        missing = undecoded_images(page)
        if missing:
            raise RuntimeError(f"{report_html}: images that did not decode: {missing}")
        bottom = page.evaluate(
            "id => { const s = document.getElementById(id); return s && s.getBoundingClientRect().bottom"
            " + window.scrollY; }",
            through_section,
        )
        if not bottom:
            raise RuntimeError(f"{report_html} has no section {through_section!r}")
        page.evaluate("window.scrollTo(0, 0)")
        raw = out_png.with_suffix(".raw.png")
        page.screenshot(path=str(raw), clip={"x": 0, "y": 0, "width": 1000, "height": bottom + 16}, full_page=True)
    with Image.open(raw) as shot:
        shot.convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(out_png, optimize=True)
    raw.unlink()
    return out_png


if __name__ == "__main__":
    written = screenshot_report_top(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"{written}: {written.stat().st_size} bytes")
