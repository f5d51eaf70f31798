"""Helpers for the browser tests and the app benchmarks: serve the app on 127.0.0.1, drive Debian's Chromium.

Playwright is a development dependency (requirements-dev.txt) and is imported only when a browser is launched.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def streamlit_server(startup_timeout: float = 120.0, env: dict | None = None, warm: bool = False,
                     log: Path | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """The app on 127.0.0.1 at a free port; yields (url, process) and stops it afterwards.

    ``warm``: started as ``mriseg serve`` (model loaded and run before the server listens), else with a plain
    ``streamlit run app.py``. The server's output goes to the file ``log`` (a temporary file by default): a pipe
    nobody reads fills up during a long run and blocks the server's logging, and with it the server.
    """
    port = free_port()
    environment = dict(os.environ, MRISEG_HF_REPO="", PYTHONPATH=str(REPO_ROOT), **(env or {}))
    command = [sys.executable, "-m", "mriseg", "serve"] if warm else [sys.executable, "-m", "streamlit", "run",
                                                                      "app.py"]
    with tempfile.TemporaryDirectory() as temporary:
        log = log or Path(temporary) / "server.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [*command, "--server.address", "127.0.0.1", "--server.port", str(port), "--server.headless",
                 "true", "--browser.gatherUsageStats", "false"],
                cwd=REPO_ROOT, env=environment, stdout=output, stderr=subprocess.STDOUT,
            )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + startup_timeout
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                        if response.read() == b"ok":
                            break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        process.kill()
                        process.wait()
                        tail = log.read_text(errors="replace")[-2000:]
                        raise RuntimeError(f"streamlit did not start: {tail}") from None
                    time.sleep(0.5)
            yield url, process
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def launch_browser(timeout_ms: int = 90_000):
    """Debian's Chromium through Playwright, with expectations that wait long enough for a cold CPU."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=timeout_ms)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_FLAGS))
        try:
            yield browser
        finally:
            browser.close()


def open_sample(page, entry: dict) -> None:
    """Click the Open button of one gallery sample on the Segment page, once the page's run has finished.

    The button is found by its widget key (Streamlit gives its element the class ``st-key-<key>`` with every
    character outside ``[a-zA-Z0-9_-]`` turned into ``-``), so a layout shift can never open another sample.
    """
    from playwright.sync_api import expect

    from mriseg.app.webapp import sample_button_key

    css_class = "st-key-" + re.sub(r"[^a-zA-Z0-9_-]", "-", sample_button_key(entry))
    button = page.locator(f".{css_class} button")
    expect(button).to_be_visible()
    expect(page.get_by_test_id("stStatusWidget")).to_have_count(0)
    button.click()


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used so far, user plus system, in seconds (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_mb(pid: int, field: str = "VmRSS") -> float:
    """A process's memory in MiB (Linux): resident now ("VmRSS") or its peak so far ("VmHWM")."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")
