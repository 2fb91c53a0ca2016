"""The report in a real headless browser (Debian's ``chromium``): it loads cleanly and shows its figures."""

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--disable-dev-shm-usage"]

# injected into a copy of the page only: records load errors and, after load, how many images decoded
_CHECKER = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || (e.target && e.target.src))), true);
window.addEventListener('load', () => {
  const images = Array.from(document.images);
  const shown = images.filter(i => i.complete && i.naturalWidth > 0 && i.getBoundingClientRect().width > 100);
  // figures shown at their own size (the confusion matrix): drawn pixel for pixel, their text never shrunk
  const natural = images.filter(i => i.closest('figure.natural'));
  const unscaled = natural.filter(i => i.clientWidth === i.naturalWidth);
  const first = images.length ? images[0].getBoundingClientRect().top + window.scrollY : -1;
  document.body.setAttribute('data-check',
    `images=${images.length};shown=${shown.length};errors=${window.__errors.length};` +
    `natural=${natural.length};unscaled=${unscaled.length};first=${Math.round(first)}`);
});
</script>"""


@pytest.fixture(scope="module")
def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no headless browser: install Debian's chromium (`apt-get install -y chromium`) to run this test")


def _run(chromium: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp / "profile"
    profile.mkdir(exist_ok=True)
    return subprocess.run([chromium, *_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=180, check=False)


def test_report_loads_without_console_errors_and_screenshot_is_not_blank(chromium, report_file, tmp_path):
    shot = tmp_path / "report.png"
    result = _run(chromium, tmp_path, "--enable-logging=stderr", "--v=0", f"--screenshot={shot}",
                  "--window-size=1280,2400", report_file.resolve().as_uri())
    assert shot.exists(), result.stderr[-2000:]
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    assert console == []  # the page writes nothing to the console: no script errors, no failed loads
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)
    assert pixels.shape[:2] == (2400, 1280)
    header = pixels[10, 10]
    assert np.abs(header - [0x1F, 0x3A, 0x5F]).max() < 8  # the page's CSS was applied (dark blue header)
    not_white = (pixels < 235).any(axis=2).mean()
    assert not_white > 0.05
    colourful = (pixels.max(axis=2) - pixels.min(axis=2) > 60).mean()
    assert colourful > 0.005  # coloured figure pixels (scatter points, bands), not only text


def _check(chromium: str, tmp: Path, page: str, width: int) -> dict[str, int]:
    """What the checker script saw in a window ``width`` pixels wide."""
    instrumented = tmp / f"instrumented_{width}.html"
    instrumented.write_text(page.replace("<head>", "<head>" + _CHECKER, 1), encoding="utf-8")
    result = _run(chromium, tmp, "--virtual-time-budget=5000", f"--window-size={width},2400", "--dump-dom",
                  instrumented.resolve().as_uri())
    found = re.search(r'data-check="([^"]*)"', result.stdout)
    assert found, result.stderr[-2000:]
    return {k: int(v) for k, v in (item.split("=") for item in found.group(1).split(";"))}


def test_every_figure_is_decoded_and_displayed(chromium, report_file, tmp_path):
    page = report_file.read_text(encoding="utf-8")
    n_images = len(re.findall(r"<img ", page))
    seen = _check(chromium, tmp_path, page, 1280)
    assert seen["images"] == n_images >= 8
    assert seen["shown"] == seen["images"]
    assert seen["errors"] == 0
    assert 0 < seen["first"] < 600  # the first figure (predicted labels) is in the first screenful


def test_the_confusion_matrix_keeps_its_size_in_a_narrow_window(chromium, report_file, tmp_path):
    seen = _check(chromium, tmp_path, report_file.read_text(encoding="utf-8"), 420)
    assert seen["natural"] == 1
    assert seen["unscaled"] == 1  # drawn pixel for pixel (scrolling sideways), its numbers never shrunk
    assert seen["shown"] == seen["images"]
