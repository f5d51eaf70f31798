"""Overlap and distance metrics between a predicted and a ground-truth mask.

Conventions (those of the field): when both masks are empty, Dice, IoU, precision and recall are 1 (a correct
"no tumour"); when exactly one is empty they are 0 except where the definition says otherwise below. HD95 is in
pixels unless a spacing is given, and undefined (None) when either mask is empty.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np


def _counts(prediction: np.ndarray, truth: np.ndarray) -> tuple[int, int, int]:
    prediction = np.asarray(prediction, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction {prediction.shape} and ground truth {truth.shape} must have the same shape")
    true_positive = int(np.count_nonzero(prediction & truth))
    false_positive = int(np.count_nonzero(prediction)) - true_positive
    return true_positive, false_positive, int(np.count_nonzero(truth)) - true_positive


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """2|P∩T| / (|P| + |T|); 1.0 when both are empty."""
    tp, fp, fn = _counts(prediction, truth)
    denominator = 2 * tp + fp + fn
    return 1.0 if denominator == 0 else 2 * tp / denominator


def iou(prediction: np.ndarray, truth: np.ndarray) -> float:
    """|P∩T| / |P∪T|; 1.0 when both are empty."""
    tp, fp, fn = _counts(prediction, truth)
    denominator = tp + fp + fn
    return 1.0 if denominator == 0 else tp / denominator


def precision(prediction: np.ndarray, truth: np.ndarray) -> float:
    """|P∩T| / |P|; 1.0 when nothing is predicted (no false positive was made)."""
    tp, fp, _ = _counts(prediction, truth)
    return 1.0 if tp + fp == 0 else tp / (tp + fp)


def recall(prediction: np.ndarray, truth: np.ndarray) -> float:
    """|P∩T| / |T|; 1.0 when there is no tumour to find."""
    tp, _, fn = _counts(prediction, truth)
    return 1.0 if tp + fn == 0 else tp / (tp + fn)


def _surface_points(mask: np.ndarray) -> np.ndarray:
    """Coordinates (slice, row, col) of boundary pixels of each 2D slice of a mask."""
    mask = np.asarray(mask, dtype=np.uint8)
    eroded = np.stack([cv2.erode(m, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
                       for m in mask.reshape(-1, *mask.shape[-2:])]).reshape(mask.shape)
    return np.argwhere(mask.astype(bool) & ~eroded.astype(bool))


def hd95(prediction: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...] | None = None) -> float | None:
    """95th percentile symmetric Hausdorff distance between mask surfaces.

    Args:
        prediction: boolean mask, 2D (H, W) or 3D (slices, H, W).
        truth: boolean mask of the same shape.
        spacing: physical size of one step along each axis (mm); pixels when None.

    Returns:
        The distance, or None when either mask is empty (the distance is undefined).
    """
    from scipy.spatial import cKDTree

    prediction = np.asarray(prediction, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    _counts(prediction, truth)
    if not prediction.any() or not truth.any():
        return None
    scale = np.ones(prediction.ndim) if spacing is None else np.asarray(spacing[-prediction.ndim:], dtype=float)
    if prediction.ndim == 2:
        pred_points, truth_points = _surface_points(prediction[None])[:, 1:], _surface_points(truth[None])[:, 1:]
    else:
        pred_points, truth_points = _surface_points(prediction), _surface_points(truth)
    pred_points = pred_points * scale
    truth_points = truth_points * scale
    to_truth, _ = cKDTree(truth_points).query(pred_points)
    to_prediction, _ = cKDTree(pred_points).query(truth_points)
    return float(np.percentile(np.concatenate([to_truth, to_prediction]), 95))


@dataclass(frozen=True)
class OverlapReport:
    """All metrics of one prediction against one ground truth."""

    dice: float
    iou: float
    precision: float
    recall: float
    hd95: float | None
    predicted_pixels: int
    truth_pixels: int

    def to_dict(self) -> dict:
        return asdict(self)


def compare(prediction: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...] | None = None) -> OverlapReport:
    """Every metric at once (Dice, IoU, precision, recall, HD95, pixel counts)."""
    return OverlapReport(
        dice=dice(prediction, truth),
        iou=iou(prediction, truth),
        precision=precision(prediction, truth),
        recall=recall(prediction, truth),
        hd95=hd95(prediction, truth, spacing),
        predicted_pixels=int(np.count_nonzero(prediction)),
        truth_pixels=int(np.count_nonzero(truth)),
    )


def bootstrap_interval(values, confidence: float = 0.95, resamples: int = 10_000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (one per patient).

    With a few dozen patients, a mean Dice is uncertain by several hundredths; the interval says how far the
    same model could land on another draw of patients like these. Seeded, so a report is reproducible.

    Args:
        values: one number per patient (at least one).
        confidence: the share of resampled means the interval holds.
        resamples: how many times the patients are drawn again, with replacement.
        seed: seeds the draws.

    Returns:
        (low, high), the interval's ends.

    Example:
        >>> bootstrap_interval([0.5, 0.5, 0.5])  # every patient alike: no uncertainty
        (0.5, 0.5)
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError("a bootstrap interval needs a non-empty list of per-patient values")
    draws = np.random.default_rng(seed).integers(0, values.size, size=(resamples, values.size))
    means = values[draws].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)
