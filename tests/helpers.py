"""Plain helpers the tests share: where things are, files made in the test (DICOM, phantoms), colour contrast."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLES = REPO_ROOT / "samples"
WEIGHTS = REPO_ROOT / "weights"


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


DARK_BACKGROUND = "#0e1117"  # Streamlit's dark theme (.streamlit/config.toml: base = "dark")


def contrast(a: str, b: str) -> float:
    """WCAG contrast ratio of two #rrggbb colours (1 = none, 21 = black on white)."""
    def luminance(colour: str) -> float:
        channels = [int(colour.lstrip("#")[i:i + 2], 16) / 255 for i in (0, 2, 4)]
        linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    light, dark = sorted((luminance(a), luminance(b)), reverse=True)
    return (light + 0.05) / (dark + 0.05)
