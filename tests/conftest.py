"""Shared fixtures. Importing torch here pays its cold-import cost once, before any timed Streamlit test."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch  # noqa: F401  (warm import, see module docstring)
from browser_helpers import CHROMIUM, launch_browser, streamlit_server

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLES = REPO_ROOT / "samples"
WEIGHTS = REPO_ROOT / "weights"


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


def mr_dataset(sop_class: str):
    """A grey-scale MR DICOM data set of ``sop_class`` with its file meta, ready for pixels."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    return ds


def make_dicom(pixels: np.ndarray, *, slope: float = 1.0, intercept: float = 0.0, spacing=(0.5, 0.5),
               position: tuple[float, float, float] | None = None, instance: int = 1, frames: bool = False,
               window: tuple[float, float] | None = None,
               orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0), series: str | None = None) -> bytes:
    """A real DICOM file (MR, 16-bit unsigned) written with pydicom; ``orientation`` (ImageOrientationPatient) is
    written with ``position``, and ``spacing=None`` leaves PixelSpacing out."""
    from pydicom.uid import MRImageStorage

    pixels = np.asarray(pixels, dtype=np.uint16)
    ds = mr_dataset(MRImageStorage)
    ds.PatientName = "Test^Phantom"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if frames:
        ds.NumberOfFrames = pixels.shape[0]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    if spacing is not None:
        ds.PixelSpacing = list(spacing)
    ds.SliceThickness = 5.0
    ds.InstanceNumber = instance
    if series is not None:
        ds.SeriesInstanceUID = series
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if position is not None:
        ds.ImagePositionPatient = list(position)
        ds.ImageOrientationPatient = [float(value) for value in orientation]
    ds.PixelData = pixels.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def head_phantom(size: int = 96, seed: int = 0) -> np.ndarray:
    """A synthetic head-like slice: dark background, bright ellipse with texture and a brighter blob."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    head = ((yy - size / 2) / (0.42 * size)) ** 2 + ((xx - size / 2) / (0.35 * size)) ** 2 < 1
    blob = (yy - 0.4 * size) ** 2 + (xx - 0.6 * size) ** 2 < (0.1 * size) ** 2
    image = np.where(head, 100 + 20 * rng.random((size, size)), 2 * rng.random((size, size)))
    return (image + 80 * blob).astype(np.float32)


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
