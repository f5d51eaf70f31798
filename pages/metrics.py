"""Metrics page: how this case responds to the threshold, and how the model did on its validation patients."""

import csv
import io
import json

import numpy as np
import plotly.graph_objects as go
import streamlit as st

# Never mriseg.training: it would import the trainer (and torchvision) on the page's first visit.
from mriseg.app import webapp
from mriseg.app.case import mask_fit_warning, missed_tumour_note, threshold_curve
from mriseg.app.visualize import CHART_COLOURS, MEMBER_DICE_COLOURS, MEMBER_LOSS_COLOURS, style_chart, threshold_line
from mriseg.evaluation.report import (
    DICE_COLUMN,
    FP_COLUMN,
    HD95_COLUMN,
    calibration_text,
    copies_rows,
    interval_text,
    optional,
)
from mriseg.weights.bundle import kept_epoch, log_by_member, member_configs


def single_curves(curves: go.Figure, rows: list[dict], config: dict) -> None:
    """One U-Net's history: loss and validation Dice, its warm restarts and the epochs it kept."""
    epochs = [int(row["epoch"]) for row in rows]
    curves.add_scatter(x=epochs, y=[float(row["train_loss"]) for row in rows], name="training loss (BCE + Dice)",
                       line_color=CHART_COLOURS["loss"])
    curves.add_scatter(x=epochs, y=[float(row["val_dice_mean"]) for row in rows], name="validation per-volume Dice",
                       yaxis="y2", line_color=CHART_COLOURS["dice"])
    lineage = config.get("initialised_from")
    while lineage:  # each warm restart reset the learning rate: mark where, so the dip after it makes sense
        curves.add_vline(x=kept_epoch(lineage) + 0.5, line_dash="dash", line_color=CHART_COLOURS["marker"],
                         line_width=2)
        lineage = lineage.get("initialised_from")
    if config.get("initialised_from"):  # one legend entry for every restart: labels on close lines overlap
        curves.add_scatter(x=[None], y=[None], mode="lines", name="warm restart (learning rate reset)",
                           line=dict(color=CHART_COLOURS["marker"], dash="dash", width=2))
    averaged = config.get("averaged_epochs")
    if averaged:
        curves.add_vrect(x0=averaged[0] - 0.5, x1=averaged[-1] + 0.5, opacity=0.2, line_width=0,
                         fillcolor=CHART_COLOURS["marker"],
                         annotation_text=f"weights of epochs {averaged[0]}-{averaged[-1]} averaged",
                         annotation_font_color=CHART_COLOURS["marker"])
    else:
        best = config.get("best_epoch") or epochs[int(np.argmax([float(row["val_dice_mean"]) for row in rows]))]
        threshold_line(curves, best, f"best epoch {best}", position="top right", colour=CHART_COLOURS["marker"],
                       dash="dot")


def ensemble_curves(curves: go.Figure, groups: dict[int, list[dict]], members: list[dict]) -> None:
    """Each ensemble member's history, with a star on the epoch whose weights it contributes."""
    for number, rows in groups.items():
        loss_colour = MEMBER_LOSS_COLOURS[(number - 1) % len(MEMBER_LOSS_COLOURS)]
        dice_colour = MEMBER_DICE_COLOURS[(number - 1) % len(MEMBER_DICE_COLOURS)]
        epochs = [int(row["epoch"]) for row in rows]
        dice_by_epoch = {int(row["epoch"]): float(row["val_dice_mean"]) for row in rows}
        curves.add_scatter(x=epochs, y=[float(row["train_loss"]) for row in rows], line_dash="dot",
                           line_color=loss_colour, name=f"U-Net {number}: training loss (dotted)")
        curves.add_scatter(x=epochs, y=list(dice_by_epoch.values()), yaxis="y2", line_color=dice_colour,
                           name=f"U-Net {number}: validation per-volume Dice")
        kept = kept_epoch(members[number - 1])
        if kept in dice_by_epoch:
            curves.add_scatter(x=[kept], y=[dice_by_epoch[kept]], yaxis="y2", mode="markers",
                               marker=dict(symbol="star", size=14, color=dice_colour,
                                           line=dict(color="white", width=1)),
                               name=f"U-Net {number}: kept epoch {kept}")


def reliability_figure(calibration: dict) -> go.Figure:
    """Predicted probability against the tumour fraction observed, bin by bin, beside the perfect diagonal."""
    rows = [row for row in calibration["bins"] if row["pixels"]]
    figure = go.Figure()
    figure.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line_dash="dash", line_color=CHART_COLOURS["marker"],
                       name="perfectly calibrated", hoverinfo="skip")
    figure.add_scatter(x=[row["mean_probability"] for row in rows], y=[row["tumour_fraction"] for row in rows],
                       mode="lines+markers", name="this model", line_color=CHART_COLOURS["dice"],
                       text=[f"{row['low']:.1f}-{row['high']:.1f}: {row['pixels']:,} pixels" for row in rows],
                       hovertemplate="%{text}<br>predicted %{x:.2f}, tumour %{y:.2f}<extra></extra>")
    figure.update_layout(title="Does a probability of 0.8 mean 80%?", xaxis_title="predicted tumour probability",
                         yaxis_title="fraction of those pixels that are tumour", xaxis_range=[0, 1],
                         yaxis_range=[0, 1.02], height=380, legend=dict(orientation="h", y=-0.25, x=0))
    return style_chart(figure, view.presenter)


def site_figure(per_site: dict) -> go.Figure:
    """Mean per-volume Dice of each scanner site, with how many patients it rests on."""
    sites = list(per_site)
    figure = go.Figure(go.Bar(x=sites, y=[per_site[site]["mean"] for site in sites],
                              text=[f"{per_site[site]['n_patients']} patient{'s' * (per_site[site]['n_patients'] > 1)}"
                                    for site in sites], textposition="outside", marker_color=CHART_COLOURS["dice"],
                              hovertemplate="%{x}: mean %{y:.3f}<extra></extra>"))
    figure.update_layout(title="Per-volume Dice by scanner site", xaxis_title="site (TCGA institution code)",
                         yaxis_title="mean Dice", yaxis_range=[0, 1.1], height=380)
    return style_chart(figure, view.presenter)


def case_section() -> None:
    """How the open case responds to the threshold."""
    if not view.presenter:  # on a projector the part's button names it
        st.header("This case")
    case = webapp.current_case()
    if case is None:
        st.info("Open a sample or upload a scan on the Segment page to see how it responds to the threshold.")
        return
    prediction = webapp.predict(model, case, tta=view.tta)
    probabilities = prediction.probabilities.mean
    curve = threshold_curve(probabilities, case.truth, model.postprocessing)
    thresholds = [row["threshold"] for row in curve]
    figure = go.Figure()
    if case.truth is not None:
        figure.add_scatter(x=thresholds, y=[row["dice"] for row in curve], name="Dice", mode="lines+markers",
                           line_color=CHART_COLOURS["dice"])
        figure.add_scatter(x=thresholds, y=[row["iou"] for row in curve], name="IoU", mode="lines+markers",
                           line_color=CHART_COLOURS["iou"], line_dash="dash", marker_symbol="square")
        figure.update_layout(yaxis_title="score", yaxis_range=[0, 1.02])
        st.caption(f"{case.name}: overlap with the ground truth ({case.truth_source}) at each threshold.")
    else:
        figure.add_scatter(x=thresholds, y=[row["predicted_pixels"] for row in curve], name="predicted area",
                           mode="lines+markers", line_color=CHART_COLOURS["area"])
        figure.update_layout(yaxis_title="tumour pixels")
        st.caption(f"{case.name} has no ground truth: predicted tumour area at each threshold.")
    threshold_line(figure, threshold, f"current {threshold:.2f}")  # at the bottom: at the top it would sit on Dice
    figure.update_layout(xaxis_title="threshold", height=CHART_HEIGHT, margin=dict(t=30, b=40))
    st.plotly_chart(style_chart(figure, view.presenter), key="case_curve")
    uploaded = (case.truth_source or "").startswith("uploaded mask")
    fit = mask_fit_warning(case.volume.pixels, case.truth, probabilities) if uploaded else None
    # A flat Dice of 0 is either a mask that does not belong to the scan, or a tumour no threshold rescues.
    note = fit or missed_tumour_note(probabilities, case.truth, model.postprocessing)
    if note:
        st.warning(note, icon=":material/help:" if fit else ":material/visibility_off:")
    if case.truth is None:
        values = probabilities[probabilities > 0.01]
        histogram = go.Figure(go.Histogram(x=values, nbinsx=50, marker_color=CHART_COLOURS["area"]))
        threshold_line(histogram, threshold, f"current {threshold:.2f}", position="top right")
        histogram.update_layout(xaxis_title="tumour probability (pixels above 0.01)", yaxis_title="pixels",
                                yaxis_type="log", height=300, margin=dict(t=30, b=40))
        st.plotly_chart(style_chart(histogram, view.presenter), key="case_histogram")


def validation_section(report: dict) -> None:
    """The model's numbers on its validation patients: the cards, each patient, the threshold sweep."""
    validation = model.config.get("split", {}).get("validation", [])
    if not view.presenter:  # on a projector the part's button names it, and the teacher says the rest
        st.header("The model")
        st.markdown(
            f"Numbers from **{report['n_patients']} validation patients** ({report['n_slices']} slices) of the "
            f"committed patient split: the model never trained on them, but they chose its epochs and its "
            f"threshold ({report['threshold']:.2f}), so they are slightly optimistic. Per-volume Dice stacks all "
            "slices of a patient into one score, the way the field reports it."
        )
    cards = st.columns(4)
    cards[0].metric("Per-volume Dice, mean", f"{report['per_volume_dice']['mean']:.3f}")
    cards[1].metric("Per-volume Dice, median", f"{report['per_volume_dice']['median']:.3f}")
    # Undefined where the validation set has no such slices: "n/a", as in the model card.
    cards[2].metric("Dice on slices with tumour", optional(report["positive_slice_dice"], ".3f"))
    cards[3].metric("False positives on empty slices", optional(report["empty_slice_fp_rate"], ".1%"))
    # Reports written before the interval existed (an older Hub revision of the weights) lack it.
    interval = report["per_volume_dice"].get("mean_ci95")
    if interval:
        st.caption(f"95% interval of the mean: **{interval_text(report)}** (bootstrap over the "
                   f"{report['n_patients']} patients). Another draw of as many patients like these could put the "
                   "same model anywhere in it, so a difference of 0.01 between two models' means says little on "
                   "its own.")
    left, right = st.columns(2)
    left.plotly_chart(patients_figure(report), key="patients_strip")
    right.plotly_chart(sweep_figure(report["threshold_sweep"]), key="sweep")
    if not view.presenter:  # a list of codes says nothing from the back row
        copies = copies_rows(report)
        if len(copies) > 1:
            st.subheader("The same patients as scans from elsewhere")
            st.dataframe(copies, hide_index=True, width="stretch",
                         column_order=("copy", DICE_COLUMN, FP_COLUMN, HD95_COLUMN))
            st.caption("Copies of the validation patients as other sources deliver scans, scored with the same "
                       "threshold and filters (never tuned on them). False positives: tumour-free slices given any "
                       "outline. HD95: how far, in pixels, the outline strays from the expert's at its worst 5%.")
        with st.expander(f"Validation patients ({len(validation)})"):
            st.write(", ".join(validation))


def patients_figure(report: dict) -> go.Figure:
    """Each validation patient's per-volume Dice, with the mean and its 95% interval."""
    patients, interval = report["patients"], report["per_volume_dice"].get("mean_ci95")
    strip = go.Figure(go.Box(y=list(patients.values()), text=list(patients), boxpoints="all", jitter=0.4,
                             pointpos=0, name="patients", hovertemplate="%{text}: %{y:.3f}<extra></extra>",
                             marker_color=CHART_COLOURS["dice"], line_color=CHART_COLOURS["dice"]))
    if interval:
        mean, (low, high) = report["per_volume_dice"]["mean"], interval
        strip.add_scatter(x=["mean, 95% interval"], y=[mean], mode="markers", marker_size=10,
                          marker_color=CHART_COLOURS["threshold"],
                          error_y=dict(type="data", symmetric=False, array=[high - mean], arrayminus=[mean - low]),
                          hovertemplate=f"mean {mean:.3f}, 95% interval {low:.3f}-{high:.3f}<extra></extra>")
    strip.update_layout(showlegend=False, title="Per-patient Dice", yaxis_title="Dice", yaxis_range=[0, 1.02],
                        height=CHART_HEIGHT)
    return style_chart(strip, view.presenter)


def sweep_figure(sweep: list[dict]) -> go.Figure:
    """Mean (and median) per-volume Dice of the validation patients at each threshold."""
    figure = go.Figure()
    figure.add_scatter(x=[row["threshold"] for row in sweep], y=[row["per_volume_dice_mean"] for row in sweep],
                       name="mean", mode="lines+markers", line_color=CHART_COLOURS["dice"])
    if "per_volume_dice_median" in sweep[0]:
        figure.add_scatter(x=[row["threshold"] for row in sweep], y=[row["per_volume_dice_median"] for row in sweep],
                           name="median", mode="lines+markers", line_color=CHART_COLOURS["median"],
                           line_dash="dash")
    threshold_line(figure, threshold, "current")
    figure.update_layout(title="Per-volume Dice versus threshold", xaxis_title="threshold", height=CHART_HEIGHT)
    return style_chart(figure, view.presenter)


def calibration_section(report: dict) -> None:
    """Reliability diagram and per-site Dice; reports written before they were added (an older Hub revision of the
    weights) lack them."""
    if "calibration" not in report or "per_site" not in report:
        if view.presenter:  # on its own screen, an empty step needs a word
            st.info("This weights folder's report has no calibration or per-site numbers.")
        return
    left, right = st.columns(2)
    left.plotly_chart(reliability_figure(report["calibration"]), key="reliability")
    right.plotly_chart(site_figure(report["per_site"]), key="sites")
    note = calibration_text(report)
    if note:
        st.caption(f"The heat map's colours are probabilities: {note}. Below the diagonal the model is more sure "
                   "than it should be. Sites with few patients say little on their own.")


def training_section(log_path) -> None:
    """Training loss and validation Dice by epoch (each U-Net's, for an ensemble)."""
    if not log_path.exists():
        st.info("This weights folder ships no training log.")
        return
    groups = log_by_member(list(csv.DictReader(io.StringIO(log_path.read_text()))))
    curves = go.Figure()
    if len(groups) > 1:
        ensemble_curves(curves, groups, member_configs(model.config))
        st.caption("This model is an ensemble: the app averages the probabilities of its U-Nets, each with its own "
                   "training history below (one warm-started from another shares that one's early epochs). The "
                   "ensemble's own validation numbers are the ones above.")
    else:
        single_curves(curves, next(iter(groups.values())), model.config)
    curves.update_layout(title="Training curves", xaxis_title="epoch", yaxis_title="loss",
                         yaxis2=dict(title="Dice", overlaying="y", side="right", range=[0, 1], tickmode="linear",
                                     tick0=0, dtick=0.2, showgrid=False), height=600 if view.presenter else 440,
                         # below the plot: at its right the legend would cover the Dice axis
                         legend=dict(orientation="h", yanchor="top", y=-0.2, x=0))
    st.plotly_chart(style_chart(curves, view.presenter), key="training_curves")


view = webapp.context()
model, threshold = view.model, view.threshold
CHART_HEIGHT = 480 if view.presenter else 380
# On a projector the page comes one screen at a time.
CASE, VALIDATION, CALIBRATION, TRAINING = "This case", "Validation patients", "Calibration and sites", "Training"
step = webapp.presenter_step("metrics_step", [CASE, VALIDATION, CALIBRATION, TRAINING])
if not view.presenter:  # on a projector the page list along the top names the page
    st.title("Metrics")
if step in (None, CASE):
    case_section()
report_path, log_path = model.source.folder / "evaluation.json", model.source.folder / "training_log.csv"
if step != CASE and not report_path.exists():
    st.info("This weights folder ships no evaluation report.")
    st.stop()
if step in (None, VALIDATION):
    validation_section(json.loads(report_path.read_text()))
if step in (None, CALIBRATION):
    calibration_section(json.loads(report_path.read_text()))
if step in (None, TRAINING):
    training_section(log_path)
