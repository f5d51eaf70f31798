"""Shared fixtures; plain helpers live in helpers.py, app_helpers.py and browser_helpers.py.

Importing torch here pays its cold-import cost once, before any timed Streamlit test."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch  # noqa: F401  (warm import, see module docstring)
from browser_helpers import CHROMIUM, launch_browser, streamlit_server
from helpers import SAMPLES, WEIGHTS


@pytest.fixture(scope="session")
def sample_index() -> list[dict]:
    return json.loads((SAMPLES / "index.json").read_text())


@pytest.fixture(scope="session")
def slice_samples(sample_index) -> list[dict]:
    return [entry for entry in sample_index if entry["category"] != "volume"]


@pytest.fixture(autouse=True)
def no_hub(monkeypatch):
    """Tests use the bundled weights unless they configure a Hub repo themselves."""
    monkeypatch.setenv("MRISEG_HF_REPO", "")


@pytest.fixture(scope="session")
def segmenter():
    """The shipped model on the CPU (tests must pass on machines without a GPU)."""
    from mriseg.weights.bundle import load_segmenter

    return load_segmenter(WEIGHTS, device="cpu")


@pytest.fixture(scope="session")
def sample_volume() -> tuple[np.ndarray, np.ndarray]:
    """The gallery's 20-slice LGG patient (a validation patient) and its manual mask."""
    from mriseg.data.io import read_volume

    volume = read_volume((SAMPLES / "TCGA_CS_4942_19970222_volume.tif").read_bytes(), "volume.tif").pixels
    truth = read_volume((SAMPLES / "TCGA_CS_4942_19970222_volume_mask.tif").read_bytes(), "mask.tif").pixels > 0
    return volume, truth


@pytest.fixture
def kaggle_folder(tmp_path, slice_samples) -> Path:
    """A small data set in the Kaggle layout built from the sample slices (one patient folder per sample)."""
    for entry in slice_samples:
        folder = tmp_path / entry["patient"]
        folder.mkdir(exist_ok=True)
        for key in ("image", "mask"):
            shutil.copy(SAMPLES / entry[key], folder / entry[key])
    return tmp_path


# The app served on 127.0.0.1 and Debian's Chromium, one of each per browser-test module.
def require_chromium() -> None:
    if Path(CHROMIUM).exists():
        return
    message = f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium) to run browser tests"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def served():
    """The running app: (url, server process)."""
    require_chromium()
    with streamlit_server(warm=True) as running:  # as `mriseg serve`, the README's way to run the app
        yield running


@pytest.fixture(scope="module")
def server(served):
    return served[0]


@pytest.fixture(scope="module")
def browser():
    require_chromium()
    with launch_browser() as chromium:
        yield chromium
