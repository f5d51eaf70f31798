"""The model's errors, one by one: every false-positive 3D component and every missed tumour slice.

A mean Dice says how much was lost, not where. This module lists, for each patient, the connected components of
the post-processed mask that touch no manual tumour (an outline drawn where there is none) and the slices whose
tumour the mask misses entirely, with what a reader needs to judge them: how big, how far from the tumour, how
confident. ``python -m mriseg errors`` writes the list as JSON; fixes are built against it (issue 35).

Slices are 0-based indices of the (possibly resampled) volume the model saw; a Kaggle file's number is one more.
Distances are in pixels of that volume, one slice step counting as one pixel (the true slice spacing is not
known from PNG slices), so a distance across slices understates millimetres.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mriseg.postprocessing import PostprocessingConfig, binarize

NO_TUMOUR = "no tumour in this patient"


@dataclass(frozen=True)
class FalsePositive:
    """A 3D (26-connected) component of the mask with no voxel in the manual mask."""

    patient: str
    first_slice: int
    last_slice: int
    slices: int  # slices holding the component
    voxels: int
    distance_px: float | str  # to the nearest tumour voxel, or NO_TUMOUR
    max_probability: float
    mean_probability: float
    tumour_free_slices: int  # of its slices, how many have no manual tumour at all
    on_tumour_free_slice: bool  # at least one of them: it counts in the empty-slice false-positive rate

    @property
    def severity(self) -> float:
        """Voxels x peak probability: large and confident first."""
        return self.voxels * self.max_probability


@dataclass(frozen=True)
class MissedSlice:
    """A slice with manual tumour that the mask does not touch."""

    patient: str
    slice: int
    tumour_pixels: int
    max_probability_in_tumour: float
    predicted_pixels: int  # mask pixels elsewhere on the slice (0: the slice is empty in the prediction)
    removed_by_filters: bool  # some tumour pixel was at or above the threshold: a filter, not the network, lost it


def false_positive_components(patient: str, mask: np.ndarray, truth: np.ndarray,
                              probabilities: np.ndarray) -> list[FalsePositive]:
    """The components of ``mask`` (slices, H, W) that do not overlap ``truth``.

    Example:
        >>> truth = np.zeros((3, 20, 20), bool); truth[1, 2:6, 2:6] = True
        >>> probabilities = np.where(truth, 0.9, 0.0); probabilities[2, 15:17, 10:13] = 0.7
        >>> [(fp.first_slice, fp.voxels, fp.distance_px, fp.max_probability, fp.on_tumour_free_slice)
        ...  for fp in false_positive_components("p", probabilities >= 0.5, truth, probabilities)]
        [(2, 6, 11.22, 0.7, True)]
    """
    from scipy import ndimage

    mask, truth = np.asarray(mask, bool), np.asarray(truth, bool)
    probabilities = np.asarray(probabilities, np.float32)
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    if not count:
        return []
    touching = np.zeros(count + 1, bool)
    touching[labels[truth]] = True
    touching[0] = True
    wanted = np.flatnonzero(~touching)
    if not len(wanted):
        return []
    distance = ndimage.distance_transform_edt(~truth) if truth.any() else None
    tumour_slices = truth.any(axis=(1, 2))
    found = []
    objects = ndimage.find_objects(labels)
    for label in wanted:
        box = objects[label - 1]
        inside = labels[box] == label
        values = probabilities[box][inside]
        on_slices = box[0].start + np.flatnonzero(inside.any(axis=(1, 2)))
        free = int((~tumour_slices[on_slices]).sum())
        found.append(FalsePositive(
            patient=patient, first_slice=int(on_slices[0]), last_slice=int(on_slices[-1]), slices=len(on_slices),
            voxels=int(inside.sum()),
            distance_px=NO_TUMOUR if distance is None else round(float(distance[box][inside].min()), 2),
            max_probability=round(float(values.max()), 4), mean_probability=round(float(values.mean()), 4),
            tumour_free_slices=free, on_tumour_free_slice=free > 0))
    return found


def missed_slices(patient: str, mask: np.ndarray, truth: np.ndarray, probabilities: np.ndarray,
                  threshold: float = 0.5) -> list[MissedSlice]:
    """The slices where ``truth`` has tumour and ``mask`` touches none of it (``threshold``: the one ``mask`` was
    made at, to tell a slice the network missed from one a post-processing filter emptied).

    Example:
        >>> truth = np.zeros((2, 8, 8), bool); truth[:, 2:4, 2:4] = True
        >>> probabilities = np.where(truth, 0.3, 0.0); probabilities[0][truth[0]] = 0.8
        >>> [(m.slice, m.tumour_pixels, m.max_probability_in_tumour, m.predicted_pixels, m.removed_by_filters)
        ...  for m in missed_slices("p", probabilities >= 0.5, truth, probabilities)]
        [(1, 4, 0.3, 0, False)]
    """
    mask, truth = np.asarray(mask, bool), np.asarray(truth, bool)
    missed = []
    for index in np.flatnonzero(truth.any(axis=(1, 2)) & ~(mask & truth).any(axis=(1, 2))):
        tumour = truth[index]
        peak = float(np.asarray(probabilities[index], np.float32)[tumour].max())
        missed.append(MissedSlice(
            patient=patient, slice=int(index), tumour_pixels=int(tumour.sum()),
            max_probability_in_tumour=round(peak, 4), predicted_pixels=int(mask[index].sum()),
            removed_by_filters=peak >= threshold))
    return missed


def error_list(predictions: Iterable, postprocessing: PostprocessingConfig) -> dict:
    """Every false-positive component and missed slice of ``predictions`` (objects with ``name``,
    ``probabilities`` and ``truth``, as :class:`mriseg.evaluation.report.PatientPrediction`), JSON-ready.

    False positives come most severe first (:attr:`FalsePositive.severity`), missed slices largest first.
    """
    false_positives: list[FalsePositive] = []
    missed: list[MissedSlice] = []
    patients = 0
    for prediction in predictions:
        patients += 1
        probabilities = np.asarray(prediction.probabilities, np.float32)
        mask = binarize(probabilities, postprocessing)
        false_positives += false_positive_components(prediction.name, mask, prediction.truth, probabilities)
        missed += missed_slices(prediction.name, mask, prediction.truth, probabilities, postprocessing.threshold)
    false_positives.sort(key=lambda fp: -fp.severity)
    missed.sort(key=lambda m: -m.tumour_pixels)
    return {
        "postprocessing": postprocessing.to_dict(),
        "n_patients": patients,
        "counts": count_errors(false_positives, missed),
        "false_positives": [{**asdict(fp), "severity": round(fp.severity, 1)} for fp in false_positives],
        "missed_slices": [asdict(m) for m in missed],
    }


def count_errors(false_positives: list[FalsePositive], missed: list[MissedSlice]) -> dict:
    """Totals: components, their voxels, how many lie on tumour-free slices, missed slices and their pixels.

    Example:
        >>> count_errors([], [MissedSlice("p", 3, 120, 0.3, 0, False)])["missed_tumour_pixels"]
        120
    """
    return {
        "false_positive_components": len(false_positives),
        "false_positive_voxels": sum(fp.voxels for fp in false_positives),
        "false_positives_on_tumour_free_slices": sum(fp.on_tumour_free_slice for fp in false_positives),
        "false_positive_patients": len({fp.patient for fp in false_positives}),
        "missed_slices": len(missed),
        "missed_slices_removed_by_filters": sum(m.removed_by_filters for m in missed),
        "missed_tumour_pixels": sum(m.tumour_pixels for m in missed),
        "missed_patients": len({m.patient for m in missed}),
    }


def find_errors(data_dir: str | Path, segmenter, patients: list[str] | None = None, tta: bool = False,
                variant: str = "original") -> dict:
    """:func:`error_list` of ``segmenter`` (with its stored post-processing) on the patients of ``data_dir``
    (every one, or only ``patients``), scored on the ``variant`` copy."""
    from mriseg.evaluation.report import predict_cases, select_cases

    predictions = predict_cases(segmenter, select_cases(data_dir, patients), tta=tta, variant=variant)
    errors = error_list(predictions, segmenter.postprocessing)
    return {"variant": variant, "tta": tta, **errors}


def format_errors(errors: dict, top: int = 10) -> str:
    """The counts and the ``top`` worst of each kind, for the terminal."""
    counts = errors["counts"]
    lines = [f"{errors['n_patients']} patients ({errors.get('variant', 'original')}): "
             f"{counts['false_positive_components']} false-positive components "
             f"({counts['false_positive_voxels']} voxels, {counts['false_positives_on_tumour_free_slices']} on "
             f"tumour-free slices, in {counts['false_positive_patients']} patients); "
             f"{counts['missed_slices']} missed tumour slices ({counts['missed_tumour_pixels']} tumour pixels, "
             f"in {counts['missed_patients']} patients; {counts['missed_slices_removed_by_filters']} of them "
             "emptied by a post-processing filter, the network had found them)"]
    if errors["false_positives"]:
        lines += ["", "false positives, worst first (slices 0-based; distance in pixels)",
                  f"  {'patient':24s} {'slices':>7s} {'voxels':>7s} {'distance':>9s} {'max p':>6s} {'mean p':>6s} "
                  "tumour-free"]
        for fp in errors["false_positives"][:top]:
            distance = fp["distance_px"] if isinstance(fp["distance_px"], str) else f"{fp['distance_px']:.1f}"
            lines.append(f"  {fp['patient']:24s} {fp['first_slice']:>3d}-{fp['last_slice']:<3d} {fp['voxels']:>7d} "
                         f"{distance:>9s} {fp['max_probability']:>6.2f} {fp['mean_probability']:>6.2f} "
                         f"{fp['tumour_free_slices']}/{fp['slices']}")
    if errors["missed_slices"]:
        lines += ["", "missed tumour slices, largest first",
                  f"  {'patient':24s} {'slice':>5s} {'tumour px':>9s} {'max p in tumour':>15s}  emptied by"]
        lines += [f"  {m['patient']:24s} {m['slice']:>5d} {m['tumour_pixels']:>9d} "
                  f"{m['max_probability_in_tumour']:>15.2f}  {'a filter' if m['removed_by_filters'] else ''}"
                  for m in errors["missed_slices"][:top]]
    return "\n".join(lines)
