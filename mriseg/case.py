"""A case in the app: one uploaded or sample volume, its ground truth when known, and what is measured on it."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from mriseg.input_check import check_input
from mriseg.io import Volume, read_mask, read_volume
from mriseg.measure import tumour_size
from mriseg.metrics import dice, iou
from mriseg.postprocessing import PostprocessingConfig, binarize

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "samples"
CURVE_THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.05, 0.96, 0.05))


@dataclass
class Case:
    """What the app is looking at.

    Attributes:
        name: file name (or sample name) shown to the user.
        digest: sha256 of the file content; keys the prediction cache.
        volume: the decoded image.
        truth: ground-truth mask (slices, H, W) when one is known.
        truth_source: where the ground truth came from, for display.
        warnings: why the file may not be what the model knows (:func:`mriseg.input_check.check_input`), worked
            out once when the file is opened.
    """

    name: str
    digest: str
    volume: Volume
    truth: np.ndarray | None = None
    truth_source: str | None = None
    warnings: tuple[str, ...] = ()


def case_from_bytes(data: bytes, filename: str) -> Case:
    """Decode an uploaded file and check it looks like brain FLAIR; raises :class:`~mriseg.errors.InputError`
    for bad input."""
    volume = read_volume(data, filename)
    return Case(filename, hashlib.sha256(data).hexdigest(), volume, warnings=tuple(check_input(volume)))


def with_truth(case: Case, data: bytes, filename: str) -> Case:
    """The case with a ground-truth mask file attached (must be binary and match the image's shape)."""
    truth = read_mask(data, filename, expected_shape=case.volume.shape)
    return replace(case, truth=truth, truth_source=f"uploaded mask {filename}")


def sample_index(samples_dir: Path = SAMPLES_DIR) -> list[dict]:
    return json.loads((samples_dir / "index.json").read_text())


def load_sample(entry: dict, samples_dir: Path = SAMPLES_DIR) -> Case:
    """A gallery sample with its radiologist-approved mask as ground truth."""
    case = case_from_bytes((samples_dir / entry["image"]).read_bytes(), entry["image"])
    truth = read_mask((samples_dir / entry["mask"]).read_bytes(), entry["mask"], case.volume.shape)
    return replace(case, truth=truth, truth_source="manual mask of the data set")


def threshold_curve(probabilities: np.ndarray, truth: np.ndarray | None, postprocessing: PostprocessingConfig,
                    thresholds: tuple[float, ...] = CURVE_THRESHOLDS) -> list[dict]:
    """Predicted pixels (and Dice, IoU against ``truth`` when given) at each threshold."""
    rows = []
    for threshold in thresholds:
        mask = binarize(probabilities, postprocessing, threshold)
        row = {"threshold": float(threshold), "predicted_pixels": int(mask.sum())}
        if truth is not None:
            row.update(dice=dice(mask, truth), iou=iou(mask, truth))
        rows.append(row)
    return rows


def measurements_csv(case: Case, mask: np.ndarray, threshold: float) -> str:
    """One row per slice (tumour pixels, mm² when the spacing is known) and an ``all`` row with the volume."""
    size = tumour_size(mask, case.volume)
    pixel_area = case.volume.pixel_area_mm2
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["file", "slice", "threshold", "tumour_pixels", "tumour_area_mm2", "tumour_volume_ml"])
    for index, pixels in enumerate(size["slice_pixels"]):
        area = "" if pixel_area is None else f"{pixels * pixel_area:.2f}"
        writer.writerow([case.name, index + 1, f"{threshold:.2f}", pixels, area, ""])
    total_area = "" if size["area_mm2"] is None else f"{size['area_mm2']:.2f}"
    volume = "" if size["volume_ml"] is None else f"{size['volume_ml']:.3f}"
    writer.writerow([case.name, "all", f"{threshold:.2f}", size["pixels"], total_area, volume])
    return buffer.getvalue()


def slice_agreement(mask: np.ndarray, truth: np.ndarray) -> list[dict]:
    """Slice by slice of a volume: ground-truth and predicted tumour pixels, their Dice, and what went wrong.

    ``verdict`` is "missed" (tumour in the ground truth, none predicted), "false alarm" (tumour predicted on a
    tumour-free slice), "both empty", or "overlap" (both have tumour; the Dice says how well they agree).

    Example:
        >>> truth = np.array([[[1, 1]], [[1, 0]], [[0, 0]]], bool)
        >>> [row["verdict"] for row in slice_agreement(np.array([[[1, 0]], [[0, 0]], [[0, 1]]], bool), truth)]
        ['overlap', 'missed', 'false alarm']
    """
    rows = []
    for index, (predicted_slice, true_slice) in enumerate(zip(mask, truth, strict=True)):
        predicted, actual = int(predicted_slice.sum()), int(true_slice.sum())
        if actual and predicted:
            verdict = "overlap"
        elif actual:
            verdict = "missed"
        else:
            verdict = "false alarm" if predicted else "both empty"
        rows.append({"slice": index + 1, "truth_pixels": actual, "predicted_pixels": predicted,
                     "dice": dice(predicted_slice, true_slice), "verdict": verdict})
    return rows
