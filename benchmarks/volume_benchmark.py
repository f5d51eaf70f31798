"""Upload to first overlay, and the server's memory peak, for a BraTS-size volume beside a 2D slice, in Chromium.

Run from the repository root:  .venv/bin/python benchmarks/volume_benchmark.py [--repeats 2]
The server is started as ``mriseg serve`` (as in a class); each file is uploaded on a new page. Times run from the
moment the file is handed to the upload box (so they include the upload) to the first overlay drawn on the canvas
(for the volume: the middle slice's preliminary one), to the final overlay and, for the volume, to the 3D viewer
drawn (its scan and masks fetched and on the GPU). The memory peak is the server's
``VmHWM`` above its resident size just before the upload (the peak is reset through ``/proc/PID/clear_refs``).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))  # the helpers the tests use

from browser_helpers import launch_browser, memory_mb, streamlit_server  # noqa: E402
from volume_helpers import write_brats_size_nifti  # noqa: E402

SLICE = REPO_ROOT / "samples" / "TCGA_HT_7686_19950629_10.png"
DRAWN = re.compile(r"\d\.\d\d")


def upload(url: str, browser, server_pid: int, scan: Path) -> dict:
    """Seconds to the first and the final overlay of ``scan``, and the server's peak MiB over its idle size."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(url)
    page.get_by_text("Upload a file").click()
    expect(page.locator("input[type=file]")).to_have_count(1)
    time.sleep(1)  # the page's run has settled
    idle = memory_mb(server_pid)
    Path(f"/proc/{server_pid}/clear_refs").write_text("5")  # VmHWM from here on
    started = time.perf_counter()
    page.locator("input[type=file]").set_input_files(str(scan))
    expect(page.locator("canvas.overlay")).to_have_attribute("data-threshold", DRAWN, timeout=300_000)
    first = time.perf_counter() - started
    final = page.locator("canvas.overlay[data-preliminary=false]")
    expect(final).to_have_attribute("data-threshold", DRAWN, timeout=300_000)
    done = time.perf_counter() - started
    viewer, in_browser = None, None
    if scan != SLICE:
        canvas = page.locator("canvas[data-ready]")
        expect(canvas).to_have_attribute("data-ready", "1", timeout=300_000)
        viewer = time.perf_counter() - started
        in_browser = (int(canvas.get_attribute("data-load-ms")), int(canvas.get_attribute("data-ready-ms")))
    peak = memory_mb(server_pid, "VmHWM") - idle
    page.close()
    return {"first_s": first, "final_s": done, "viewer_s": viewer, "viewer_browser_ms": in_browser, "peak_mib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=2, help="runs, each on a fresh server (nothing cached)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, launch_browser(timeout_ms=300_000) as browser:
        volume = write_brats_size_nifti(Path(folder) / "brats_size.nii.gz")
        for repeat in range(args.repeats):
            with streamlit_server(warm=True) as (url, server):
                for name, scan in (("2D slice 256x256", SLICE), ("volume 155x240x240", volume)):
                    result = upload(url, browser, server.pid, scan)
                    viewer = ""
                    if result["viewer_s"] is not None:
                        loaded, drawn = result["viewer_browser_ms"]
                        viewer = (f", 3D viewer ready {result['viewer_s']:.2f} s (in the browser: files loaded "
                                  f"{loaded} ms, drawn {drawn} ms after it began)")
                    print(f"run {repeat + 1}, {name}: first overlay {result['first_s']:.2f} s, final overlay "
                          f"{result['final_s']:.2f} s{viewer}, server peak +{result['peak_mib']:.0f} MiB over idle")


if __name__ == "__main__":
    main()
