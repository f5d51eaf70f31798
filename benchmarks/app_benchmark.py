"""App speed: threshold move to new overlay in the browser, re-render after a threshold change, upload-to-overlay
time, concurrent browser sessions, idle CPU.

Run from the repository root:  .venv/bin/python benchmarks/app_benchmark.py [--sessions 5]
Needs Debian's chromium for the browser parts (they are skipped with a note when it is missing).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))  # the browser helpers the tests use

from browser_helpers import CHROMIUM, cpu_seconds, launch_browser, open_sample, streamlit_server  # noqa: E402

from mriseg.app.case import sample_index  # noqa: E402


def rerender_times(repeats: int) -> dict:
    """Server-side time for the app to re-render after the threshold moves (probabilities cached)."""
    from streamlit.testing.v1 import AppTest

    from mriseg.app.case import load_sample
    from mriseg.app.visualize import display_image, heatmap, overlay, to_png
    from mriseg.app.webapp import Prediction, current_mask, sample_button_key
    from mriseg.weights.bundle import load_segmenter

    os.environ["MRISEG_HF_REPO"] = ""
    entry = max((e for e in sample_index() if e["category"] == "large"), key=lambda e: e["tumour_pixels"])
    at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=120)
    at.run()
    at.button(key=sample_button_key(entry)).click().run()
    whole_app = []
    for index in range(repeats):
        started = time.perf_counter()
        at.slider(key="threshold").set_value(0.3 + 0.4 * (index % 2)).run()
        whole_app.append(time.perf_counter() - started)

    # The work the result view does per threshold change, without Streamlit's script machinery.
    segmenter = load_segmenter(REPO_ROOT / "weights", device="cpu")
    case = load_sample(entry)
    prediction = Prediction(segmenter.predict(case.volume.pixels), 0.0, "CPU")
    model = type("Model", (), {"postprocessing": segmenter.postprocessing})()
    view = []
    for index in range(repeats):
        started = time.perf_counter()
        mask = current_mask(model, prediction, 0.3 + 0.4 * (index % 2))
        image = display_image(case.volume.pixels[0])
        to_png(overlay(image, mask[0]))
        to_png(heatmap(prediction.probabilities.mean[0], image))
        view.append(time.perf_counter() - started)
    return {"app_rerun_ms": 1000 * statistics.median(whole_app), "view_render_ms": 1000 * statistics.median(view)}


def upload_to_overlay(url: str, browser, sample: Path) -> float:
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    page.get_by_text("Upload a file").click()
    started = time.perf_counter()
    page.locator("input[type=file]").set_input_files(str(sample))
    expect(page.get_by_text("Tumour at threshold", exact=False)).to_be_visible(timeout=120_000)
    seconds = time.perf_counter() - started
    page.close()
    return seconds


# Times one key press on the threshold view's slider: from the key event to the first animation frame after the
# overlay was redrawn (the moment the new picture can be on screen).
WATCH_KEYS = """slider => { window.__keyAt = null;
  slider.addEventListener('keydown', event => { window.__keyAt = performance.now(); }, {capture: true}); }"""
FRAME_AFTER_DRAW = """canvas => new Promise(resolve => {
  const check = () => {
    const drawn = Number(canvas.dataset.drawnAt || 0);
    if (window.__keyAt !== null && drawn >= window.__keyAt) {
      requestAnimationFrame(() => resolve(performance.now() - window.__keyAt));
    } else { requestAnimationFrame(check); }
  };
  check();
})"""


def threshold_to_overlay(url: str, browser, sessions: int, presses: int) -> list[float]:
    """Milliseconds from a key press on the threshold slider to the redrawn overlay, over ``sessions`` pages that
    take turns moving their sliders (each release also reruns that session on the server)."""
    from playwright.sync_api import expect

    entries = [entry for entry in sample_index() if entry["category"] != "tumour-free"]
    pages = []
    for index in range(sessions):
        page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
        page.goto(url)
        open_sample(page, entries[index % len(entries)])
        expect(page.get_by_test_id("stStatusWidget")).to_have_count(0, timeout=300_000)
        expect(page.locator("canvas.overlay")).to_have_count(1, timeout=300_000)  # the previous run's has gone
        expect(page.locator("canvas.overlay")).to_have_attribute("data-threshold", re.compile(r"\d\.\d\d"),
                                                                 timeout=300_000)
        slider = page.locator("input#threshold")
        slider.evaluate(WATCH_KEYS)
        pages.append((page, slider, page.locator("canvas.overlay")))
    times = []
    for press in range(presses):
        for page, slider, canvas in pages:
            page.bring_to_front()  # a page in the background gets no animation frames
            slider.focus()
            slider.press("ArrowRight" if (press // 10) % 2 == 0 else "ArrowLeft")
            times.append(canvas.evaluate(FRAME_AFTER_DRAW))
    for page, _, _ in pages:
        page.context.close()
    return times


def cold_start(warm: bool) -> float:
    """Seconds from opening the page of a freshly started server to the first overlay of a gallery sample."""
    from playwright.sync_api import expect

    entry = max((e for e in sample_index() if e["category"] == "large"), key=lambda e: e["tumour_pixels"])
    with launch_browser() as browser, streamlit_server(warm=warm) as (url, _):
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        started = time.perf_counter()
        page.goto(url)
        open_sample(page, entry)
        expect(page.locator("canvas.overlay")).to_have_attribute("data-threshold", re.compile(r"\d\.\d\d"),
                                                                 timeout=120_000)
        return time.perf_counter() - started


def concurrent_sessions(url: str, browser, sessions: int) -> dict:
    """``sessions`` pages each open a different gallery sample at once; time until every overlay shows."""
    from playwright.sync_api import expect

    pages = []
    for _ in range(sessions):
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.goto(url)
        expect(page.get_by_role("button", name="Open").first).to_be_visible(timeout=120_000)
        pages.append(page)
    started = time.perf_counter()
    entries = sample_index()
    for index, page in enumerate(pages):
        open_sample(page, entries[index % len(entries)])
    finished = []
    for page in pages:
        expect(page.get_by_text("Tumour at threshold", exact=False)).to_be_visible(timeout=300_000)
        finished.append(time.perf_counter() - started)
    for page in pages:
        page.context.close()
    return {"sessions": sessions, "slowest_s": max(finished), "median_s": statistics.median(finished)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--sessions", type=int, default=5)
    args = parser.parse_args()

    times = rerender_times(args.repeats)
    print(f"threshold change, whole app rerun (AppTest, median of {args.repeats}): {times['app_rerun_ms']:.1f} ms")
    print(f"threshold change, result view work for a 256x256 slice (median): {times['view_render_ms']:.1f} ms")
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} missing: browser timings skipped")
        return
    for warm, how in ((False, "streamlit run app.py"), (True, "mriseg serve")):
        print(f"page open -> first overlay on a fresh server ({how}): {cold_start(warm):.2f} s")
    sample = REPO_ROOT / "samples" / "TCGA_HT_7686_19950629_10.png"
    with streamlit_server() as (url, server), launch_browser() as browser:
        for sessions in (1, args.sessions):
            moves = threshold_to_overlay(url, browser, sessions, presses=40)
            print(f"threshold move -> new overlay in Chromium, {sessions} session(s) moving sliders in turn: median "
                  f"{statistics.median(moves):.1f} ms, 90th percentile {statistics.quantiles(moves, n=10)[-1]:.1f} ms "
                  f"({len(moves)} moves)")
        first = upload_to_overlay(url, browser, sample)
        again = upload_to_overlay(url, browser, sample)
        print(f"upload to first overlay: {first:.2f} s (new file), {again:.2f} s (same file again, cached)")
        result = concurrent_sessions(url, browser, args.sessions)
        print(f"{result['sessions']} browser sessions opening samples at once: slowest {result['slowest_s']:.2f} s, "
              f"median {result['median_s']:.2f} s")
        time.sleep(5)  # the pages have closed; let the server settle
        before = cpu_seconds(server.pid)
        time.sleep(10)
        print(f"idle server: {100 * (cpu_seconds(server.pid) - before) / 10:.0f}% of a CPU core")


if __name__ == "__main__":
    main()
