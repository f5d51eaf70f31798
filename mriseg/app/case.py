"""A case in the app: one uploaded or sample volume, its ground truth when known, and what is measured on it."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from mriseg.config import SAMPLES_DIR
from mriseg.data.input_check import check_input
from mriseg.data.io import Volume, labels_to_mask, read_label_mask, read_mask, read_volume
from mriseg.metrics import dice, iou, tumour_size
from mriseg.postprocessing import PostprocessingConfig, binarize
from mriseg.preprocessing import darken_masked_background, find_head

CURVE_THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.05, 0.96, 0.05))
# A Dice curve whose highest and lowest points lie closer than this is "flat": the threshold hardly matters there.
FLAT_CURVE = 0.05
# Dice at least this much below its best at both ends of the curve: a balance point between false positives and false
# negatives that a class can see, not noise.
BALANCE_DROP = 0.01


@dataclass
class Case:
    """What the app is looking at.

    Attributes:
        name: file name (or sample name) shown to the user.
        digest: sha256 of the file content; keys the prediction cache.
        volume: the decoded image.
        truth: ground-truth mask (slices, H, W) when one is known.
        truth_source: where the ground truth came from, for display.
        warnings: why the file may not be what the model knows (:func:`mriseg.data.input_check.check_input`), worked
            out once when the file is opened.
        truth_labels: an uploaded label mask (several labels, such as BraTS's 1, 2, 4), kept so the user can choose
            which labels count; None for a binary mask.
        truth_label_values: the labels > 0 that ``truth_labels`` holds.
        truth_counted: the labels ``truth`` counts as tumour.
    """

    name: str
    digest: str
    volume: Volume
    truth: np.ndarray | None = None
    truth_source: str | None = None
    warnings: tuple[str, ...] = ()
    truth_labels: np.ndarray | None = None
    truth_label_values: tuple[int, ...] = ()
    truth_counted: tuple[int, ...] = ()


def case_from_bytes(data: bytes, filename: str) -> Case:
    """Decode an uploaded file and check it looks like brain FLAIR; raises :class:`~mriseg.errors.InputError`
    for bad input."""
    volume = read_volume(data, filename)
    return Case(filename, hashlib.sha256(data).hexdigest(), volume, warnings=tuple(check_input(volume)))


def with_truth(case: Case, data: bytes, filename: str) -> Case:
    """The case with a ground-truth mask file attached: binary, or a label mask of which every label > 0 counts
    until :func:`count_labels` chooses others; it must match the image's shape."""
    labels, values = read_label_mask(data, filename, expected_shape=case.volume.shape)
    truth = replace(case, truth_source=f"uploaded mask {filename}", truth_labels=None, truth_label_values=(),
                    truth_counted=())
    if len(values) < 2:
        return replace(truth, truth=labels > 0)
    return count_labels(replace(truth, truth_labels=labels, truth_label_values=values), values)


def count_labels(case: Case, chosen: tuple[int, ...] | list[int]) -> Case:
    """The case whose ground truth counts the ``chosen`` labels of its label mask as tumour."""
    chosen = tuple(sorted(int(value) for value in chosen))
    return replace(case, truth=labels_to_mask(case.truth_labels, chosen), truth_counted=chosen)


def is_brats_style(values: tuple[int, ...]) -> bool:
    """Labels as BraTS writes them: 2 (oedema) with some of 1 (necrotic core), 3, 4 (enhancing tumour)."""
    return 2 in values and len(values) > 1 and set(values) <= {1, 2, 3, 4}


def describe_labels(values: tuple[int, ...], counted: tuple[int, ...]) -> str:
    """What a label mask holds and which of its labels count as tumour, with the BraTS region's name when it has one.

    Example:
        >>> describe_labels((1, 2, 4), (1, 2, 4))
        'This mask holds labels 1, 2, 4 (BraTS-style): counting labels 1, 2, 4 as tumour (whole tumour).'
        >>> describe_labels((1, 2, 4), (1, 4))
        'This mask holds labels 1, 2, 4 (BraTS-style): counting labels 1, 4 as tumour (tumour core).'
        >>> describe_labels((1, 2, 3), ())
        'This mask holds labels 1, 2, 3 (BraTS-style): counting no label as tumour, so the ground truth is empty.'
    """
    brats = is_brats_style(values)
    held = f"This mask holds labels {', '.join(map(str, values))}{' (BraTS-style)' if brats else ''}"
    if not counted:
        return f"{held}: counting no label as tumour, so the ground truth is empty."
    regions = {tuple(values): "whole tumour"}
    if brats:
        regions |= {tuple(v for v in values if v != 2): "tumour core", (max(values),): "enhancing tumour"}
    region = f" ({regions[counted]})" if tuple(counted) in regions and (brats or counted == values) else ""
    plural = "s" if len(counted) > 1 else ""
    return f"{held}: counting label{plural} {', '.join(map(str, counted))} as tumour{region}."


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
    """One row per slice (tumour pixels, mm² when the spacing is known) and an ``all`` row with the volume.

    A case with ground truth gets two more columns, ``truth_pixels`` and ``dice``: per slice, and in the ``all``
    row for the whole volume (the per-volume Dice, all slices pooled, as on the Compare page). A slice where both
    the mask and the truth are empty scores a Dice of 1.
    """
    size = tumour_size(mask, case.volume)
    pixel_area = case.volume.pixel_area_mm2
    truth = case.truth
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    header = ["file", "slice", "threshold", "tumour_pixels", "tumour_area_mm2", "tumour_volume_ml"]
    writer.writerow(header + ([] if truth is None else ["truth_pixels", "dice"]))
    for index, pixels in enumerate(size["slice_pixels"]):
        area = "" if pixel_area is None else f"{pixels * pixel_area:.2f}"
        row = [case.name, index + 1, f"{threshold:.2f}", pixels, area, ""]
        if truth is not None:
            row += [int(truth[index].sum()), f"{dice(mask[index], truth[index]):.4f}"]
        writer.writerow(row)
    total_area = "" if size["area_mm2"] is None else f"{size['area_mm2']:.2f}"
    volume = "" if size["volume_ml"] is None else f"{size['volume_ml']:.3f}"
    row = [case.name, "all", f"{threshold:.2f}", size["pixels"], total_area, volume]
    if truth is not None:
        row += [int(truth.sum()), f"{dice(mask, truth):.4f}"]
    writer.writerow(row)
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


def dice_range(curve: list[dict]) -> tuple[float, float]:
    """Lowest and highest Dice of a :func:`threshold_curve` computed with a ground truth."""
    scores = [row["dice"] for row in curve]
    return min(scores), max(scores)


def is_flat(curve: list[dict]) -> bool:
    """Whether Dice hardly changes with the threshold (less than :data:`FLAT_CURVE` between its ends)."""
    low, high = dice_range(curve)
    return high - low < FLAT_CURVE


def widest_trade_off(curves: dict[str, list[dict]]) -> str | None:
    """Of several cases' Dice curves (name -> :func:`threshold_curve`), the one whose Dice changes most with the
    threshold: the case that shows the trade-off best. None when every curve is flat.

    Example:
        >>> flat, steep = [{"dice": 0.9}, {"dice": 0.92}], [{"dice": 0.5}, {"dice": 0.8}]
        >>> widest_trade_off({"a.png": flat, "b.png": steep})
        'b.png'
    """
    steep = {name: dice_range(curve)[1] - dice_range(curve)[0] for name, curve in curves.items() if
             not is_flat(curve)}
    return max(steep, key=steep.get) if steep else None


def balance_drop(curve: list[dict]) -> float:
    """How far Dice falls from its best on a :func:`threshold_curve` (with ground truth) to the higher of its two
    ends: 0 when the best is an end (a curve that only rises or only falls)."""
    return max(row["dice"] for row in curve) - max(curve[0]["dice"], curve[-1]["dice"])


def balance_point(curve: list[dict]) -> dict | None:
    """The row of a :func:`threshold_curve` (with ground truth) where Dice is highest, when that lies between the
    ends with Dice at least :data:`BALANCE_DROP` lower at both: where false positives and false negatives balance.
    None for a curve that only rises, only falls or stays level.

    Example:
        >>> balance_point([{"threshold": 0.1, "dice": 0.90}, {"threshold": 0.5, "dice": 0.94},
        ...                {"threshold": 0.9, "dice": 0.92}])["threshold"]
        0.5
        >>> balance_point([{"threshold": 0.1, "dice": 0.6}, {"threshold": 0.9, "dice": 0.8}]) is None
        True
    """
    return max(curve, key=lambda row: row["dice"]) if balance_drop(curve) >= BALANCE_DROP else None


def clearest_balance(curves: dict[str, list[dict]]) -> str | None:
    """Of several cases' Dice curves (name -> :func:`threshold_curve`), the one whose balance point stands out most;
    None when none has one."""
    drops = {name: balance_drop(curve) for name, curve in curves.items() if balance_point(curve) is not None}
    return max(drops, key=drops.get) if drops else None


def highest_probability_in_truth(probabilities: np.ndarray, truth: np.ndarray) -> float | None:
    """The highest tumour probability the model gives any pixel of the ground truth; None for an empty truth.

    Example:
        >>> highest_probability_in_truth(np.array([[0.9, 0.02, 0.01]]), np.array([[False, True, True]]))
        0.02
    """
    truth = np.asarray(truth, bool)
    return float(np.asarray(probabilities)[truth].max()) if truth.any() else None


def rescue_threshold(probabilities: np.ndarray, truth: np.ndarray, postprocessing: PostprocessingConfig,
                     thresholds: tuple[float, ...] = CURVE_THRESHOLDS) -> float | None:
    """The highest of ``thresholds`` (the lesson's steps, 0.05 to 0.95) at which the post-processed mask touches
    the ground truth at all, or None when none does: then no threshold rescues the miss, and advice to lower the
    threshold would only add false alarms. Works on a slice (H, W) or a volume (S, H, W).

    Example:
        >>> truth = np.zeros((1, 8, 8), bool); truth[0, 2:6, 2:6] = True
        >>> probabilities = np.where(truth, 0.3, 0.0)
        >>> rescue_threshold(probabilities, truth, PostprocessingConfig())
        0.3
        >>> rescue_threshold(probabilities * 0.1, truth, PostprocessingConfig()) is None  # 0.03: below every step
        True
    """
    truth = np.asarray(truth, bool)
    highest = highest_probability_in_truth(probabilities, truth)
    if highest is None or highest < min(thresholds):
        return None
    for threshold in sorted(thresholds, reverse=True):
        if threshold <= highest and (binarize(probabilities, postprocessing, threshold) & truth).any():
            return float(threshold)
    return None


def missed_tumour_note(probabilities: np.ndarray, truth: np.ndarray | None, postprocessing: PostprocessingConfig,
                       thresholds: tuple[float, ...] = CURVE_THRESHOLDS) -> str | None:
    """A sentence for a tumour the model misses at every threshold (see :func:`rescue_threshold`), else None."""
    if truth is None or not np.asarray(truth).any() or rescue_threshold(probabilities, truth, postprocessing,
                                                                        thresholds) is not None:
        return None
    highest = highest_probability_in_truth(probabilities, truth)
    lowest = min(thresholds)
    why = (f"below even the lowest threshold, {lowest:.2f}" if highest < lowest else
           "but the few pixels that reach a threshold are removed by post-processing as too small")
    return (f"No threshold rescues this miss: the highest tumour probability the model gives any pixel inside the "
            f"manual mask is {highest:.2g}, {why}. Lowering the threshold would only add false alarms elsewhere; "
            "the model does not see this tumour.")


def head_mask(volume_pixels: np.ndarray) -> np.ndarray:
    """(S, H, W) pixels that belong to the head, holes (dark fluid, a dark lesion) included: the image background
    is what lies outside. A blank slice has no head."""
    slices = darken_masked_background(np.asarray(volume_pixels, np.float32).reshape(-1, *np.shape(volume_pixels)[-2:]))
    heads = [find_head(image) for image in slices]
    return np.stack([np.zeros(image.shape, bool) if head is None else ndimage.binary_fill_holes(head)
                     for image, head in zip(slices, heads, strict=True)])


def mask_fit_warning(volume_pixels: np.ndarray, truth: np.ndarray, probabilities: np.ndarray,
                     lowest: float = CURVE_THRESHOLDS[0]) -> str | None:
    """Why an uploaded ground-truth mask may not belong to this scan, or None when nothing looks wrong.

    A mask of the same size as the scan is accepted, but one drawn on another scan scores a meaningless Dice of 0.
    Two signs give it away: most of it (over half) lies on the image background outside the head, or none of it
    touches what the model marks even at the ``lowest`` threshold (that can also be a tumour the model misses, so
    the warning says both). An empty mask (no tumour) is never questioned.
    """
    truth = np.asarray(truth, bool).reshape(-1, *np.shape(truth)[-2:])
    if not truth.any():
        return None
    outside = float((truth & ~head_mask(volume_pixels)).sum() / truth.sum())
    if outside > 0.5:
        return (f"{outside:.0%} of this mask lies on the image background, outside the head: it probably belongs to "
                "another scan, or it is flipped or shifted. The metrics below would then mean nothing.")
    answer = np.asarray(probabilities).reshape(truth.shape) >= lowest
    if not (answer & truth).any():
        highest = highest_probability_in_truth(probabilities, truth)
        return (f"None of this mask touches what the model marks even at the lowest threshold, {lowest:.2f} (its "
                f"highest probability inside the mask is {highest:.2g}). Check that the mask belongs to this scan: "
                "a mask of another scan of the same size is accepted, and scores a Dice of 0. If it does belong, "
                "the model missed this tumour entirely.")
    return None
