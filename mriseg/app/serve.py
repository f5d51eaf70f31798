"""``mriseg serve``: the app, with the model loaded and run before the first visitor arrives.

``streamlit run app.py`` imports PyTorch, loads the weights and sets up PyTorch's kernels only when the first
browser connects, and the first student waits for all of it. Here the same process does that work first, then
hands over to Streamlit's own command line; the app finds everything in its process-wide caches. It also says
where the app will listen and who can use it: without ``--server.address`` that is every network interface.
"""

from __future__ import annotations

import os
import socket
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
# Addresses that mean "every interface" to the web server under Streamlit (None: Streamlit's default).
EVERY_INTERFACE = {None, "", "0.0.0.0", "::"}


def resolved_address(streamlit_options: list[str]) -> tuple[str | None, int] | None:
    """``server.address`` and ``server.port`` as ``streamlit run`` resolves them: its options (and their
    ``STREAMLIT_SERVER_*`` environment variables) over ``.streamlit/config.toml`` over the defaults. None when the
    options do not parse: Streamlit then says why itself."""
    import click
    from streamlit import config
    from streamlit.web import bootstrap
    from streamlit.web import cli as streamlit_cli

    try:
        context = streamlit_cli.main_run.make_context("run", [str(PROJECT_ROOT / "app.py"), *streamlit_options])
    except click.ClickException:
        return None
    flags = {name: value for name, value in context.params.items() if name not in ("target", "args")}
    bootstrap.load_config_options(flag_options=flags)
    return config.get_option("server.address"), config.get_option("server.port")


def machine_addresses() -> list[str]:
    """127.0.0.1 and the addresses this machine's own resolver gives for its host name (no other machine asked
    when the name is in /etc/hosts, as it usually is)."""
    try:
        found = {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, type=socket.SOCK_STREAM)}
    except OSError:  # a host name nothing resolves: the loopback address is still there
        found = set()
    return ["127.0.0.1", *sorted(found - {"127.0.0.1"})]


def url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def listening_lines(address: str | None, port: int, password_set: bool) -> list[str]:
    """Where the app listens, and who can use it."""
    if address in EVERY_INTERFACE:
        urls = ", ".join(url(host, port) for host in machine_addresses())
        where = f"the app listens on every network interface of this machine, port {port}: {urls}"
    else:
        where = f"the app listens on {address if address.startswith('unix://') else url(address, port)}"
    if password_set:
        return [where, "a class password is required (MRISEG_CLASS_PASSWORD or class_password in secrets.toml)"]
    return [where, "warning: anyone who can reach these addresses can use the app: set MRISEG_CLASS_PASSWORD (or "
                   "class_password in .streamlit/secrets.toml) for a class password, or pass --server.address "
                   "127.0.0.1 to keep it to this machine (see docs/serving.md)"]


def serve(streamlit_options: list[str], device: str = "auto") -> int:
    """Warm the model (see :func:`mriseg.app.webapp.warm_up`), say where the app listens and who can use it, then
    run ``streamlit run app.py`` in this process, with :data:`CLASSROOM_SETTINGS`.

    Args:
        streamlit_options: options for ``streamlit run`` (e.g. ``["--server.port", "8501"]``).
        device: "auto", "cpu" or "cuda".
    """
    started = time.perf_counter()
    import plotly.graph_objects  # noqa: F401  (the Segment page's chart; imported once here, not at first visit)

    from mriseg.app import access, webapp
    from mriseg.data.dicom import temporary_root

    temporary_root()  # sweeps the DICOM files a killed server left behind: they name patients
    model = webapp.warm_up(device)
    print(f"model {model.version} ready on {model.segmenter.device_label}, gallery segmented "
          f"({time.perf_counter() - started:.1f} s); starting the app", file=sys.stderr)
    if model.notice:
        print(f"warning: {model.notice}", file=sys.stderr)
    from streamlit.web import cli as streamlit_cli

    for name, value in CLASSROOM_SETTINGS.items():
        os.environ.setdefault(name, value)
    resolved = resolved_address(streamlit_options)
    if resolved:
        for line in listening_lines(*resolved, password_set=bool(access.class_password())):
            print(line, file=sys.stderr)
    sys.argv = ["streamlit", "run", str(PROJECT_ROOT / "app.py"), *streamlit_options]
    return streamlit_cli.main()
