"""The app's memory per upload, measured in a process of its own: ``python tests/app_memory.py FILE [FILE ...]``.

Prints one JSON line per file, uploaded one after the other on the Segment page of one app session: the process's
resident memory before the upload (``idle_mib``; the app open, the model loaded), the peak above that while the file
is read, segmented and shown (``peak_over_idle_mib``), and the message the page showed (``error``, or null). The peak
comes from the kernel (``VmHWM``, reset through ``/proc/self/clear_refs`` before each upload), so no short spike
between two samples is missed. ``--tta`` turns the uncertainty toggle on first.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import REPO_ROOT  # noqa: E402


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def wait_for_volumes() -> bool:
    """Wait for the volumes being segmented in the background (AppTest never reruns the page's polling fragment,
    so this process keeps them watched); whether there were any."""
    from mriseg.app.webapp import pending_predictions

    pending = list(pending_predictions().values())
    for prediction in pending:
        while not prediction.finished.wait(1.0):
            prediction.watch("app_memory")
    return bool(pending)


def measure(paths: list[Path], tta: bool = False) -> list[dict]:
    """Open the app, choose "Upload a file", upload each of ``paths`` in turn; the figures of each (module doc)."""
    from streamlit.testing.v1 import AppTest

    os.environ.setdefault("MRISEG_HF_REPO", "")
    at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=600)
    at.run()
    if tta:
        at.toggle(key="tta").set_value(True).run()
    at.radio(key="source").set_value("Upload a file").run()
    results = []
    for path in paths:
        data = path.read_bytes()
        idle = _status_mib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
        at.file_uploader(key="upload").set_value((path.name, data, "application/octet-stream")).run()
        if wait_for_volumes():
            at.run()  # the final result of a volume segmented in the background
        errors = [element.value for element in at.error]
        results.append({"file": path.name, "idle_mib": round(idle),
                        "peak_over_idle_mib": round(_status_mib("VmHWM") - idle),
                        "error": errors[0] if errors else None, "exception": bool(at.exception)})
        del data
    return results


if __name__ == "__main__":
    arguments = sys.argv[1:]
    for result in measure([Path(name) for name in arguments if name != "--tta"], tta="--tta" in arguments):
        print(json.dumps(result))
