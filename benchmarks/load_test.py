"""A class at once: N real browser sessions segment different scans against one ``streamlit run``.

Each session is its own browser context (its own Streamlit session). The first sessions open the gallery
samples; the rest upload distinct files (shifted copies of real sample slices), so every one of them needs its
own forward pass. Reports the slowest and median time to first overlay and the server's peak memory, then runs
a second wave to show memory stays bounded as sessions come and go.

Run from the repository root:  .venv/bin/python benchmarks/load_test.py --sessions 25 --waves 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))  # the browser helpers the tests use

from browser_helpers import launch_browser, open_sample, peak_memory_mb, streamlit_server  # noqa: E402

from mriseg.app.case import sample_index  # noqa: E402

OVERLAY = "Tumour at threshold"


def resident_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def upload_variants(folder: Path, count: int, wave: int) -> list[Path]:
    """Distinct PNGs made from the sample slices by small shifts (new content, same anatomy)."""
    slices = [entry["image"] for entry in sample_index() if entry["category"] != "volume"]
    files = []
    for index in range(count):
        image = cv2.imread(str(REPO_ROOT / "samples" / slices[index % len(slices)]), cv2.IMREAD_GRAYSCALE)
        shifted = np.roll(image, shift=(wave * 7 + index // len(slices) + 1, index % 5), axis=(0, 1))
        path = folder / f"student_{wave}_{index:02d}.png"
        cv2.imwrite(str(path), shifted)
        files.append(path)
    return files


def run_wave(browser, url: str, sessions: int, wave: int, folder: Path) -> list[float]:
    """All sessions act within a second; returns each one's seconds to its first overlay.

    The first wave opens every gallery sample once and uploads the rest; later waves upload new files only,
    so the server's caches must evict to take them.
    """
    from playwright.sync_api import expect

    entries = sample_index()
    gallery = len(entries) if wave == 0 else 0
    uploads = upload_variants(folder, max(0, sessions - gallery), wave)
    pages = []
    for _ in range(sessions):
        page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        page.goto(url)
        pages.append(page)
    for page in pages:
        expect(page.get_by_role("button", name="Open").first).to_be_visible()
    started = time.perf_counter()
    for index, page in enumerate(pages):
        if index < gallery:
            open_sample(page, entries[index])
        else:
            page.get_by_text("Upload a file").click()
            page.locator("input[type=file]").set_input_files(str(uploads[index - gallery]))
    times = []
    for page in pages:
        expect(page.get_by_text(OVERLAY, exact=False).first).to_be_visible(timeout=600_000)
        times.append(time.perf_counter() - started)
    for page in pages:
        page.context.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=25)
    parser.add_argument("--waves", type=int, default=2)
    args = parser.parse_args()

    with (tempfile.TemporaryDirectory() as temp, streamlit_server() as (url, process),
          launch_browser(600_000) as browser):
        samples: list[float] = []
        stop = threading.Event()

        def sample_memory() -> None:
            while not stop.is_set():
                samples.append(resident_mb(process.pid))
                time.sleep(0.2)

        sampler = threading.Thread(target=sample_memory, daemon=True)
        sampler.start()
        print(f"server started, {resident_mb(process.pid):.0f} MiB resident before any session")
        for wave in range(args.waves):
            times = run_wave(browser, url, args.sessions, wave, Path(temp))
            time.sleep(3)
            print(f"wave {wave + 1}: {args.sessions} sessions, time to first overlay slowest {max(times):.1f} s, "
                  f"median {statistics.median(times):.1f} s; all {len(times)} pages showed their overlay; "
                  f"server resident after the wave {resident_mb(process.pid):.0f} MiB")
        stop.set()
        sampler.join()
        print(f"server peak memory (VmHWM) {peak_memory_mb(process.pid):.0f} MiB, "
              f"highest sampled resident {max(samples):.0f} MiB")


if __name__ == "__main__":
    main()
