"""``mriseg serve``: the app, with the model loaded and run before the first visitor arrives.

``streamlit run app.py`` imports PyTorch, loads the weights and sets up PyTorch's kernels only when the first
browser connects, and the first student waits for all of it. Here the same process does that work first, then
hands over to Streamlit's own command line; the app finds everything in its process-wide caches.
"""

from __future__ import annotations

import os
import sys
import time

from mriseg.config import PROJECT_ROOT

# Streamlit settings for a class, as environment defaults: they override .streamlit/config.toml, and the user's own
# environment and command-line options override them. Rerun-on-save is for editing the app: with it, every session
# re-scans the source of each module imported since its last run, on the one thread that sends every session's
# messages, and 30 students uploading at once waited ~14 s for those scans. The full garbage collection Streamlit
# forces after every script run holds the interpreter for a moment each time: with 30 sessions, opening the page took
# all of them 7.9 s instead of 1.1 s, at the same peak memory (Python's own collector still runs as usual).
CLASSROOM_SETTINGS = {"STREAMLIT_SERVER_FILE_WATCHER_TYPE": "none", "STREAMLIT_RUNNER_POST_SCRIPT_GC": "false"}


def serve(streamlit_options: list[str], device: str = "auto") -> int:
    """Warm the model (see :func:`mriseg.app.webapp.warm_up`), then run ``streamlit run app.py`` in this process,
    with :data:`CLASSROOM_SETTINGS`.

    Args:
        streamlit_options: options for ``streamlit run`` (e.g. ``["--server.port", "8501"]``).
        device: "auto", "cpu" or "cuda".
    """
    started = time.perf_counter()
    import plotly.graph_objects  # noqa: F401  (the Segment page's chart; imported once here, not at first visit)

    from mriseg.app import webapp

    model = webapp.warm_up(device)
    print(f"model {model.version} ready on {model.segmenter.device_label}, gallery segmented "
          f"({time.perf_counter() - started:.1f} s); starting the app", file=sys.stderr)
    from streamlit.web import cli as streamlit_cli

    for name, value in CLASSROOM_SETTINGS.items():
        os.environ.setdefault(name, value)
    sys.argv = ["streamlit", "run", str(PROJECT_ROOT / "app.py"), *streamlit_options]
    return streamlit_cli.main()
