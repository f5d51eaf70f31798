"""Where the weights come from: the Hugging Face Hub (through the HF cache) or the bundled ``weights/`` folder.

A Hub repo is configured with ``MRISEG_HF_REPO`` (and a pinned ``MRISEG_HF_REVISION``), by environment
variable or Streamlit secrets. Order of resolution:

1. online and configured: download into the HF cache, but give up after ``timeout`` seconds (the client's own
   retries would keep a user waiting ~24 s on a dead network);
2. configured: whatever the HF cache already holds for that repo and revision (works with ``HF_HUB_OFFLINE=1``);
3. the ``weights/`` folder shipped with mriseg.

The source that served is logged and returned; the fingerprint and sha256 in ``config.json`` are checked when the
model loads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from mriseg import config
from mriseg.weights.bundle import CONFIG_NAME, WEIGHTS_NAME

log = logging.getLogger("mriseg")

REQUIRED_FILES = (CONFIG_NAME, WEIGHTS_NAME)
# Shipped beside the weights for the app's model page; a repo without them still serves.
OPTIONAL_FILES = ("README.md", "training_log.csv", "evaluation.json")
DEFAULT_TIMEOUT = 2.0


@dataclass(frozen=True)
class WeightsSource:
    """A folder holding config.json + model.safetensors, and how it was found.

    Attributes:
        folder: the folder (an HF cache snapshot or the bundled one).
        kind: "hub" (downloaded now), "hf-cache" (already cached) or "bundled".
        detail: repo id and revision, or the bundled path, for display.
    """

    folder: Path
    kind: str
    detail: str


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _fetch(repo_id: str, revision: str | None, cache_dir: str | None, endpoint: str | None,
           local_files_only: bool, timeout: float) -> Path:
    from huggingface_hub import hf_hub_download

    paths = [
        hf_hub_download(repo_id, name, revision=revision, cache_dir=cache_dir, endpoint=endpoint,
                        local_files_only=local_files_only, etag_timeout=timeout)
        for name in REQUIRED_FILES
    ]
    for name in OPTIONAL_FILES:
        # Optional extras: their absence must not stop the model from loading.
        with contextlib.suppress(Exception):
            hf_hub_download(repo_id, name, revision=revision, cache_dir=cache_dir, endpoint=endpoint,
                            local_files_only=local_files_only, etag_timeout=timeout)
    return Path(paths[0]).parent


def _fetch_with_deadline(timeout: float, **kwargs) -> Path:
    """Run the download in a daemon thread and stop waiting after ``timeout`` seconds."""
    outcome: dict = {}

    def work() -> None:
        try:
            outcome["folder"] = _fetch(local_files_only=False, timeout=timeout, **kwargs)
        except Exception as error:  # reported to the caller below
            outcome["error"] = error

    thread = threading.Thread(target=work, daemon=True, name="mriseg-hub-download")
    thread.start()
    thread.join(timeout)
    if "folder" in outcome:
        return outcome["folder"]
    raise TimeoutError(f"no answer from the Hub within {timeout:.1f} s") if thread.is_alive() else outcome["error"]


def resolve_weights(
    repo_id: str | None = None,
    revision: str | None = None,
    *,
    cache_dir: str | Path | None = None,
    endpoint: str | None = None,
    offline: bool | None = None,
    bundled: str | Path | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> WeightsSource:
    """Find the weights folder to load.

    Args:
        repo_id: Hub model repo; defaults to ``$MRISEG_HF_REPO``. None or empty: use the bundled folder.
        revision: pinned revision (commit, tag or branch); defaults to ``$MRISEG_HF_REVISION``.
        cache_dir: HF cache folder; defaults to the usual one (``$HF_HUB_CACHE``).
        endpoint: Hub address; defaults to ``$HF_ENDPOINT`` or huggingface.co.
        offline: skip the network; defaults to ``$HF_HUB_OFFLINE``.
        bundled: the fallback folder; defaults to :data:`mriseg.config.BUNDLED_WEIGHTS` (read at each call).
        timeout: seconds to wait for the Hub before falling back.

    Returns:
        The :class:`WeightsSource` that served.

    Example:
        >>> resolve_weights(repo_id="").kind
        'bundled'
    """
    repo_id = os.environ.get("MRISEG_HF_REPO") if repo_id is None else repo_id
    revision = revision or os.environ.get("MRISEG_HF_REVISION") or None
    if offline is None:
        from huggingface_hub import constants

        # The client reads HF_HUB_OFFLINE once, at import: honour both the variable now and its setting then.
        offline = _truthy(os.environ.get("HF_HUB_OFFLINE")) or constants.HF_HUB_OFFLINE
    cache_dir = None if cache_dir is None else str(cache_dir)
    where = f"{repo_id}@{revision or 'main'}"
    if repo_id:
        arguments = dict(repo_id=repo_id, revision=revision, cache_dir=cache_dir, endpoint=endpoint)
        if not offline:
            try:
                folder = _fetch_with_deadline(timeout, **arguments)
                log.info("weights served from the Hub: %s (%s)", where, folder)
                return WeightsSource(folder, "hub", where)
            except Exception as error:
                log.warning("Hub unreachable for %s (%s); trying the HF cache", where, error)
        try:
            folder = _fetch(local_files_only=True, timeout=timeout, **arguments)
            log.info("weights served from the HF cache: %s (%s)", where, folder)
            return WeightsSource(folder, "hf-cache", where)
        except Exception as error:
            log.warning("%s is not in the HF cache (%s); using the bundled weights", where, error)
    bundled = Path(bundled or config.BUNDLED_WEIGHTS)
    log.info("weights served from the bundled folder %s", bundled)
    return WeightsSource(bundled, "bundled", str(bundled))



def integrity_notice(source: WeightsSource, error: Exception) -> str:
    """What a visitor is told, and the log says, when the Hub or HF-cache copy in ``source`` failed its checks and
    the bundled weights serve instead."""
    notice = f"The Hub copy of {source.detail} failed its integrity check; serving the bundled weights instead. {error}"
    log.error(notice)
    return notice
