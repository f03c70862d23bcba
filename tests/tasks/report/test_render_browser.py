"""The HTML report in a real headless browser (Debian's chromium; .ci/run installs it when missing)."""

import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from tasks.report.render import render_html
from tests.tasks.report.test_render import context  # noqa: F401  (the shared report context fixture)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs Debian's chromium)")
def test_html_report_renders_in_headless_chromium(context, tmp_path):  # noqa: F811
    page = tmp_path / "report.html"
    page.write_text(render_html(context), encoding="utf-8")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars", "--window-size=1000,1400",
         f"--screenshot={shot}", page.as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (1400, 1000)
    ink = (pixels < 200).mean()
    assert ink > 0.01, f"the screenshot is almost blank ({ink:.2%} dark pixels)"
    assert pixels.std() > 10
