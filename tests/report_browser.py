"""Opening the workflow's HTML report in headless Chromium (Debian's `chromium`, driven by
Playwright) and checking from screenshots that a figure renders (`make test-slurm`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np


def curve_colours() -> dict[str, tuple[int, int, int]]:
    """The colours of the saturation figure's method curves (lrmerge.report), as 0-255 RGB."""
    from matplotlib.colors import to_rgb

    from lrmerge.report import METHOD_STYLE

    return {m: tuple(round(255 * c) for c in to_rgb(style["color"]))
            for m, style in METHOD_STYLE.items() if style["color"] != "tab:gray"}


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise RuntimeError("no chromium: make test-slurm installs Debian's chromium")
    return path


def colour_pixels(png: Path, rgb: tuple[int, int, int], tol: int = 12) -> int:
    from PIL import Image

    img = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return int((np.abs(img - np.array(rgb)).max(axis=-1) <= tol).sum())


def screenshot_figure(html: Path, out: Path, figure: str = "saturation", family: str = "all"
                      ) -> tuple[Path, Path]:
    """Screenshots of the report before and after opening one figure from Report > Figures."""
    from playwright.sync_api import sync_playwright

    before, after = out / "report-home.png", out / f"report-{figure}-{family}.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(html.resolve().as_uri())
        page.screenshot(path=str(before))
        page.get_by_text("Report", exact=True).nth(1).click()  # the results category
        page.get_by_text("Figures", exact=True).click()
        row = page.locator("tr", has_text=figure).filter(has_text=family).first
        row.locator("a[iconname=eye]").click()
        page.wait_for_function(
            "() => [...document.images].some(i => i.complete && i.naturalWidth > 1000)")
        page.screenshot(path=str(after))
        browser.close()
    return before, after


def check_figures_render(html: Path, out: Path) -> None:
    """The landing page shows none of the method curves' colours; once the saturation figure is
    opened, several of them show (curves may hide one another, so not each one)."""
    before, after = screenshot_figure(html, out)
    colours = curve_colours()
    shown = {m: colour_pixels(after, rgb) for m, rgb in colours.items()}
    assert sum(colour_pixels(before, rgb) for rgb in colours.values()) < 20
    assert sum(shown.values()) > 1000, shown
    assert sum(n > 50 for n in shown.values()) >= 3, shown
