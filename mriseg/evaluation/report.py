"""Evaluation on a folder in the Kaggle LGG layout, with the numbers the field trusts (Buda et al. 2019).

The headline is the **per-volume Dice**: all slices of a patient stacked, one Dice per patient, then the mean
and median over patients. Slice-level Dice averaged over every slice looks far better than it is, because
most slices are tumour-free and an empty prediction on them scores a perfect 1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from mriseg.data.lgg import PatientCase, find_cases, site_of
from mriseg.evaluation.robustness import make_variant
from mriseg.inference import Segmenter
from mriseg.metrics import ReliabilityCounts, bootstrap_interval, compare, dice
from mriseg.postprocessing import PostprocessingConfig, binarize

DEFAULT_THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.1, 0.91, 0.05))
MIN_COMPONENT_CHOICES = (0.0, 0.0002, 0.0005, 0.001, 0.002)
MIN_VOLUME_CHOICES = (0.0, 0.05, 0.1, 0.2, 0.35)


@dataclass
class PatientPrediction:
    name: str
    probabilities: np.ndarray  # (slices, H, W) float16 to halve the memory of a whole data set
    truth: np.ndarray  # (slices, H, W) bool


def predict_cases(segmenter: Segmenter, cases: list[PatientCase], tta: bool = False,
                  variant: str = "original") -> list[PatientPrediction]:
    """Probabilities for every patient (as the ``variant`` copy, see :mod:`mriseg.evaluation.robustness`), with a
    progress bar."""
    predictions = []
    for case in tqdm(cases, desc="segmenting patients", unit="patient"):
        volume, truth = make_variant(*case.load(), variant)
        probabilities = segmenter.predict(volume, tta=tta).mean.astype(np.float16)
        predictions.append(PatientPrediction(case.name, probabilities, truth))
    return predictions


def per_volume_scores(predictions: list[PatientPrediction], postprocessing: PostprocessingConfig) -> dict[str, float]:
    return {p.name: dice(binarize(p.probabilities, postprocessing), p.truth) for p in predictions}


def threshold_sweep(predictions: list[PatientPrediction], postprocessing: PostprocessingConfig,
                    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS) -> list[dict]:
    """Per-volume Dice mean and median at each threshold (other post-processing unchanged)."""
    rows = []
    for threshold in thresholds:
        config = replace(postprocessing, threshold=float(threshold))
        scores = list(per_volume_scores(predictions, config).values())
        rows.append({"threshold": float(threshold), "per_volume_dice_mean": float(np.mean(scores)),
                     "per_volume_dice_median": float(np.median(scores))})
    return rows


def tune_postprocessing(predictions: list[PatientPrediction], thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS,
                        min_fractions: tuple[float, ...] = MIN_COMPONENT_CHOICES,
                        volume_fractions: tuple[float, ...] = MIN_VOLUME_CHOICES,
                        ) -> tuple[PostprocessingConfig, float]:
    """Post-processing with the best mean per-volume Dice on these (validation) patients.

    One setting at a time (threshold, then the 2D speck filter, then the 3D component filter, then the
    threshold again), which needs a few dozen evaluations instead of the full grid's hundreds. Enclosed holes are
    filled throughout.
    """
    def score(config: PostprocessingConfig) -> float:
        return float(np.mean(list(per_volume_scores(predictions, config).values())))

    # Holes are always filled, not tuned: the manual masks draw an enclosed core as tumour (fill_holes).
    best = PostprocessingConfig(fill_holes=True)
    best_score = score(best)
    searches = (("threshold", thresholds), ("min_component_fraction", min_fractions),
                ("min_volume_fraction", volume_fractions), ("threshold", thresholds))
    for field, values in searches:
        for value in values:
            candidate = replace(best, **{field: float(value)})
            candidate_score = score(candidate)
            if candidate_score > best_score + 1e-9:
                best, best_score = candidate, candidate_score
    return best, best_score


def per_site_dice(patients: dict[str, float]) -> dict[str, dict]:
    """Per-volume Dice grouped by scanner site (the second part of a TCGA name): does the model travel?"""
    by_site: dict[str, list[float]] = {}
    for name, value in patients.items():
        by_site.setdefault(site_of(name), []).append(value)
    return {site: {"n_patients": len(values), "mean": float(np.mean(values)), "median": float(np.median(values)),
                   "min": float(np.min(values))}
            for site, values in sorted(by_site.items())}


def summarize(predictions: list[PatientPrediction], postprocessing: PostprocessingConfig,
              thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS) -> dict:
    """The evaluation report (JSON-ready) for predictions already made."""
    per_patient = {}
    positive_slice_dice, positive_detected, empty_slices, empty_with_prediction = [], 0, 0, 0
    reliability = ReliabilityCounts()
    for prediction in predictions:
        mask = binarize(prediction.probabilities, postprocessing)
        per_patient[prediction.name] = compare(mask, prediction.truth).to_dict()
        reliability.add(prediction.probabilities, prediction.truth)
        for predicted_slice, true_slice in zip(mask, prediction.truth, strict=True):
            if true_slice.any():
                positive_slice_dice.append(dice(predicted_slice, true_slice))
                positive_detected += bool((predicted_slice & true_slice).any())
            else:
                empty_slices += 1
                empty_with_prediction += bool(predicted_slice.any())
    patients = {name: row["dice"] for name, row in per_patient.items()}
    dice_values = np.array(list(patients.values()))
    hd95_values = [row["hd95"] for row in per_patient.values() if row["hd95"] is not None]

    def mean_of(key: str) -> float:
        return float(np.mean([row[key] for row in per_patient.values()]))

    return {
        "per_volume_dice": {"mean": float(dice_values.mean()), "median": float(np.median(dice_values)),
                            "std": float(dice_values.std()), "min": float(dice_values.min()),
                            "max": float(dice_values.max()),
                            # how far the mean could move on another draw of as many patients
                            "mean_ci95": list(bootstrap_interval(dice_values))},
        "patients": patients,
        "patient_metrics": per_patient,
        "per_site": per_site_dice(patients),
        "positive_slice_dice": float(np.mean(positive_slice_dice)) if positive_slice_dice else None,
        # a slice with tumour counts as found when the mask touches the tumour on it
        "positive_slice_detection_rate": positive_detected / len(positive_slice_dice) if positive_slice_dice else None,
        "empty_slice_fp_rate": empty_with_prediction / empty_slices if empty_slices else None,
        "calibration": {"bins": reliability.table(), "ece": reliability.expected_calibration_error(),
                        "ece_from_0.1": reliability.expected_calibration_error(from_probability=0.1)},
        "iou": mean_of("iou"),
        "precision": mean_of("precision"),
        "recall": mean_of("recall"),
        "hd95_px": float(np.mean(hd95_values)) if hd95_values else None,
        "threshold_sweep": threshold_sweep(predictions, postprocessing, thresholds),
        "threshold": postprocessing.threshold,
        "min_component_fraction": postprocessing.min_component_fraction,
        "min_volume_fraction": postprocessing.min_volume_fraction,
        "fill_holes": postprocessing.fill_holes,
        "n_patients": len(predictions),
        "n_slices": int(sum(len(p.truth) for p in predictions)),
        "n_positive_slices": len(positive_slice_dice),
        "n_empty_slices": empty_slices,
    }


def select_cases(data_dir: str | Path, patients: list[str] | None = None) -> list[PatientCase]:
    """The patient cases in ``data_dir`` (Kaggle layout): every one, or only ``patients``.

    Raises:
        FileNotFoundError: when none of ``patients`` is there.
    """
    cases = find_cases(data_dir)
    if patients is None:
        return cases
    wanted = set(patients)
    cases = [case for case in cases if case.name in wanted]
    if not cases:
        raise FileNotFoundError(f"none of the requested patients are in {data_dir}")
    return cases


def evaluate(data_dir: str | Path, segmenter: Segmenter, patients: list[str] | None = None,
             tta: bool = False, variant: str = "original") -> dict:
    """Evaluate ``segmenter`` on every patient folder of ``data_dir`` (or only ``patients``).

    Args:
        data_dir: a folder in the Kaggle LGG layout (PNG, or the original 3-channel TIFF).
        segmenter: the model with its stored post-processing.
        patients: restrict to these patient folder names.
        tta: average with the mirrored image.
        variant: score copies of the patients as another source would deliver them (skull-stripped, resampled,
            BraTS-like; :mod:`mriseg.evaluation.robustness`).

    Returns:
        The report; see :func:`summarize` for the keys.
    """
    predictions = predict_cases(segmenter, select_cases(data_dir, patients), tta=tta, variant=variant)
    report = summarize(predictions, segmenter.postprocessing)
    report["tta"] = tta
    report["variant"] = variant
    return report


def interval_text(report: dict, spec: str = ".3f") -> str:
    """The 95% interval of the mean per-volume Dice as "low-high"."""
    low, high = report["per_volume_dice"]["mean_ci95"]
    return f"{low:{spec}}-{high:{spec}}"


def site_text(report: dict) -> str:
    """Per-volume Dice mean by scanner site, as "CS 0.877 (3 patients), DU ..."."""
    return ", ".join(f"{site} {row['mean']:.3f} ({row['n_patients']} patient{'s' * (row['n_patients'] > 1)})"
                     for site, row in report["per_site"].items())


def calibration_text(report: dict) -> str | None:
    """What the probabilities mean, in a sentence: the calibration gap and how often a 0.8-0.9 pixel is tumour."""
    calibration = report["calibration"]
    if calibration["ece_from_0.1"] is None:
        return None
    text = (f"where the model gives a probability of 0.1 or more, it differs from the fraction of pixels that are "
            f"tumour by {calibration['ece_from_0.1']:.3f} on average (expected calibration error)")
    high = next((row for row in calibration["bins"] if round(row["low"], 2) == 0.8 and row["pixels"]), None)
    if high is not None:
        text += f"; pixels given 0.8-0.9 are tumour {high['tumour_fraction']:.0%} of the time"
    return text


COPY_NAMES = {"original": "original (skull on, as trained)", "skull-stripped": "skull-stripped",
              "resampled": "resampled (1 mm-like, thin slices)",
              "brats-like": "BraTS-like (stripped, resampled, z-scored)"}
DICE_COLUMN, FP_COLUMN, HD95_COLUMN = "per-volume Dice (95% interval)", "false positives on empty slices", "HD95 (px)"


def copies_rows(report: dict, names: dict[str, str] = COPY_NAMES) -> list[dict[str, str]]:
    """One row of text per copy of the validation patients a report scored (the original first, each named by
    ``names``): per-volume Dice with its 95% interval, precision / recall, the empty-slice false-positive rate, the
    mean HD95 and the DU site's mean ("-" where a report written before they were kept lacks one).

    Example:
        >>> report = {"per_volume_dice": {"mean": 0.842, "mean_ci95": [0.785, 0.89]}, "empty_slice_fp_rate": 0.01,
        ...           "hd95_px": 3.2, "precision": 0.83, "recall": 0.86, "per_site": {"DU": {"mean": 0.78}},
        ...           "robustness": {"skull-stripped": {"per_volume_dice_mean": 0.836, "mean_ci95": [0.78, 0.88],
        ...           "precision": 0.84, "recall": 0.84, "per_site": {"DU": 0.78}}}}
        >>> [(row[DICE_COLUMN], row[HD95_COLUMN]) for row in copies_rows(report)]
        [('0.842 (0.785-0.890)', '3.2'), ('0.836 (0.780-0.880)', '-')]
    """
    def text(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    def row(variant: str, mean: float, summary: dict, du: float | None) -> dict[str, str]:
        interval = summary.get("mean_ci95")
        return {"copy": names.get(variant, variant),
                DICE_COLUMN: f"{mean:.3f}" + (f" ({interval[0]:.3f}-{interval[1]:.3f})" if interval else ""),
                "precision / recall": f"{summary['precision']:.3f} / {summary['recall']:.3f}",
                FP_COLUMN: text(summary.get("empty_slice_fp_rate"), ".1%"),
                HD95_COLUMN: text(summary.get("hd95_px"), ".1f"),
                "DU site": text(du, ".3f")}

    dice = report["per_volume_dice"]
    rows = [row("original", dice["mean"], dict(report, mean_ci95=dice.get("mean_ci95")),
                report["per_site"].get("DU", {}).get("mean"))]
    for variant, summary in (report.get("robustness") or {}).items():
        rows.append(row(variant, summary["per_volume_dice_mean"], summary, summary["per_site"].get("DU")))
    return rows


def format_report(report: dict) -> str:
    """A readable table of the report for the terminal."""
    lines = [
        f"patients {report['n_patients']}, slices {report['n_slices']} "
        f"({report['n_positive_slices']} with tumour, {report['n_empty_slices']} without); "
        f"threshold {report['threshold']:.2f}",
        "",
        f"{'per-volume Dice mean':32s} {report['per_volume_dice']['mean']:.4f}",
        f"{'  95% interval of the mean':32s} {interval_text(report, '.4f')} "
        f"(bootstrap over the {report['n_patients']} patients)",
        f"{'per-volume Dice median':32s} {report['per_volume_dice']['median']:.4f}",
    ]
    if report["positive_slice_dice"] is not None:
        lines.append(f"{'Dice over slices with tumour':32s} {report['positive_slice_dice']:.4f}")
        lines.append(f"{'slices with tumour found':32s} {report['positive_slice_detection_rate']:.2%}")
    if report["empty_slice_fp_rate"] is not None:
        lines.append(f"{'false positives, empty slices':32s} {report['empty_slice_fp_rate']:.2%}")
    lines += [f"{'IoU (per volume, mean)':32s} {report['iou']:.4f}",
              f"{'precision (per volume, mean)':32s} {report['precision']:.4f}",
              f"{'recall (per volume, mean)':32s} {report['recall']:.4f}"]
    if report["hd95_px"] is not None:
        lines.append(f"{'HD95 (pixels, mean)':32s} {report['hd95_px']:.2f}")
    lines += ["", "site  patients  per-volume Dice mean / median / worst"]
    lines += [f"  {site:6s} {row['n_patients']:5d}     {row['mean']:.4f} / {row['median']:.4f} / {row['min']:.4f}"
              for site, row in report["per_site"].items()]
    lines += ["", "calibration: predicted probability against the tumour fraction observed (pixels)"]
    lines += [f"  {row['low']:.1f}-{row['high']:.1f}  {row['pixels']:>11,d}  predicted {row['mean_probability']:.3f}"
              f"  observed {row['tumour_fraction']:.3f}"
              for row in report["calibration"]["bins"] if row["pixels"]]
    gap = report["calibration"]["ece_from_0.1"]
    if gap is not None:
        lines.append(f"  mean gap where the probability is 0.1 or more (ECE): {gap:.3f}")
    lines += ["", "threshold  per-volume Dice mean / median"]
    lines += [f"  {row['threshold']:.2f}     {row['per_volume_dice_mean']:.4f} / {row['per_volume_dice_median']:.4f}"
              for row in report["threshold_sweep"]]
    lines += ["", "patient                          Dice"]
    lines += [f"  {name:30s} {value:.4f}" for name, value in sorted(report["patients"].items(), key=lambda kv: kv[1])]
    return "\n".join(lines)


def write_report(report: dict, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=2) + "\n")


def compare_reports(baseline: dict, candidate: dict, margin: float = 0.005) -> dict:
    """Is ``candidate`` better than ``baseline``? Paired over the patients both reports scored.

    Two models' separate intervals overlap almost always on a few dozen patients; pairing each patient with itself
    removes how hard that patient is, so the interval of the mean difference is far narrower.

    Args:
        baseline: an evaluation report (``evaluate --out``), the model to beat.
        candidate: a report on the same patients.
        margin: a patient counts as better or worse only beyond this Dice difference.

    Returns:
        The patients compared, both means, the mean difference (candidate - baseline) with its 95% bootstrap
        interval, the margin, and the patients better and worse by more than it (name -> difference); and, where
        both reports hold them, ``secondary``: the empty-slice false-positive rate and the mean 95th-percentile
        Hausdorff distance of each, with the paired HD95 difference over the patients both define it for.
    """
    shared = sorted(set(baseline["patients"]) & set(candidate["patients"]))
    if not shared:
        raise ValueError("the two reports have no patient in common: evaluate both models on the same folder")
    differences = {name: candidate["patients"][name] - baseline["patients"][name] for name in shared}
    values = np.array(list(differences.values()))
    return {
        "n_patients": len(shared),
        "baseline_mean": float(np.mean([baseline["patients"][name] for name in shared])),
        "candidate_mean": float(np.mean([candidate["patients"][name] for name in shared])),
        "mean_difference": float(values.mean()),
        "mean_difference_ci95": list(bootstrap_interval(values)),
        "margin": margin,
        "better": {name: diff for name, diff in differences.items() if diff > margin},
        "worse": {name: diff for name, diff in differences.items() if diff < -margin},
        "secondary": secondary_metrics(baseline, candidate, shared),
    }


def secondary_metrics(baseline: dict, candidate: dict, shared: list[str]) -> dict:
    """The false alarms and the outline distance beside Dice: empty-slice false-positive rate and mean HD95 of
    both reports (None where a report lacks them), and the paired HD95 difference where both have per-patient rows.

    Example:
        >>> rows = lambda *values: {f"p{i}": {"hd95": v} for i, v in enumerate(values)}
        >>> found = secondary_metrics({"empty_slice_fp_rate": 0.03, "patient_metrics": rows(10.0, 4.0)},
        ...                           {"empty_slice_fp_rate": 0.02, "patient_metrics": rows(4.0, 4.0)}, ["p0", "p1"])
        >>> found["empty_slice_fp_rate"], found["hd95_difference"], found["hd95_patients"]
        ({'baseline': 0.03, 'candidate': 0.02}, -3.0, 2)
    """
    found: dict = {key: {"baseline": baseline.get(key), "candidate": candidate.get(key)}
                   for key in ("empty_slice_fp_rate", "hd95_px")}
    rows = baseline.get("patient_metrics") or {}, candidate.get("patient_metrics") or {}
    paired = [(rows[0][name]["hd95"], rows[1][name]["hd95"]) for name in shared
              if name in rows[0] and name in rows[1]
              and rows[0][name].get("hd95") is not None and rows[1][name].get("hd95") is not None]
    if paired:
        differences = np.array([after - before for before, after in paired])
        found.update(hd95_difference=float(differences.mean()),
                     hd95_difference_ci95=list(bootstrap_interval(differences)), hd95_patients=len(paired))
    return found


def format_comparison(comparison: dict) -> str:
    """The comparison as a few lines for the terminal, ending with a verdict."""
    low, high = comparison["mean_difference_ci95"]
    if low > 0:
        verdict = "the candidate is better on these patients (the interval lies above 0)"
    elif high < 0:
        verdict = "the candidate is worse on these patients (the interval lies below 0)"
    else:
        verdict = "no difference that these patients can show (the interval holds 0)"
    lines = [f"patients in both reports: {comparison['n_patients']}",
             f"per-volume Dice mean: baseline {comparison['baseline_mean']:.4f}, "
             f"candidate {comparison['candidate_mean']:.4f}",
             f"difference {comparison['mean_difference']:+.4f}, 95% interval {low:+.4f} to {high:+.4f} "
             "(paired bootstrap over patients)",
             f"better by more than {comparison['margin']}: {len(comparison['better'])} patients; "
             f"worse: {len(comparison['worse'])}"]
    lines += [f"  {name:30s} {diff:+.4f}" for name, diff in
              sorted({**comparison["better"], **comparison["worse"]}.items(), key=lambda item: item[1])]
    secondary = comparison.get("secondary", {})
    rate = secondary.get("empty_slice_fp_rate", {})
    if rate.get("baseline") is not None and rate.get("candidate") is not None:
        lines.append(f"false positives on empty slices: baseline {rate['baseline']:.2%}, "
                     f"candidate {rate['candidate']:.2%}")
    distance = secondary.get("hd95_px", {})
    if distance.get("baseline") is not None and distance.get("candidate") is not None:
        line = f"HD95 (pixels, mean): baseline {distance['baseline']:.2f}, candidate {distance['candidate']:.2f}"
        if "hd95_difference" in secondary:
            low, high = secondary["hd95_difference_ci95"]
            line += (f"; paired difference {secondary['hd95_difference']:+.2f}, 95% interval {low:+.2f} to "
                     f"{high:+.2f} ({secondary['hd95_patients']} patients)")
        lines.append(line)
    return "\n".join(lines + [verdict])


def optional(value: float | None, spec: str) -> str:
    """A metric for the card; "n/a" where it is undefined (no tumour-free slice, nothing predicted ...)."""
    return "n/a" if value is None else format(value, spec)
