"""Compare page: prediction against ground truth, with an error map and the overlap metrics."""

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from mriseg.app import webapp
from mriseg.app.case import (
    balance_point,
    clearest_balance,
    count_labels,
    describe_labels,
    dice_range,
    is_flat,
    load_sample,
    mask_fit_warning,
    missed_tumour_note,
    sample_index,
    slice_agreement,
    threshold_curve,
    widest_trade_off,
    with_truth,
)
from mriseg.app.visualize import (
    CHART_COLOURS,
    ERROR_COLOURS,
    display_image,
    error_map,
    overlay,
    style_chart,
    threshold_line,
)
from mriseg.metrics import compare
from mriseg.postprocessing import binarize

view = webapp.context()
model, threshold = view.model, view.threshold
# On a projector the page comes in two screens: the scores and slices, then the lesson with its picture, numbers
# and curve side by side.
SCORES, LESSON = "Scores and slices", "Threshold lesson"
LESSON_PICTURE_WIDTH = 560  # px: with the controls above it, the error map ends within a 1080-px screen
top_row = st.container(horizontal=True, vertical_alignment="center")
with top_row:
    step = webapp.presenter_step("compare_step", [SCORES, LESSON])
if step != LESSON:
    st.title("Compare with ground truth")
case = webapp.require_case()

with top_row.popover("Ground-truth mask", icon=":material/upload_file:") if view.presenter else st.container():
    uploaded = st.file_uploader(
        "Ground-truth mask (optional)", key="truth_upload",
        help="A mask (PNG/TIFF/NIfTI...) with the same shape as the scan: binary (0 for background, any one value "
             "for tumour), or a label mask such as BraTS's (0, 1, 2, 4), whose labels you then choose.",
    )
    webapp.process_upload(uploaded, "truth_upload",
                          lambda file: webapp.set_truth(with_truth(case, file.getvalue(), file.name)),
                          on_error=webapp.drop_uploaded_truth)
case = webapp.current_case()  # with the uploaded ground truth, when one was accepted just now


def count_chosen_labels() -> None:
    webapp.set_truth(count_labels(webapp.current_case(), st.session_state["truth_labels_counted"]))


if case.truth_labels is not None:
    # The case holds the choice (it survives other pages and a new upload resets it); the widget shows it.
    st.session_state["truth_labels_counted"] = list(case.truth_counted)
    st.multiselect("Labels counted as tumour", case.truth_label_values, key="truth_labels_counted",
                   on_change=count_chosen_labels,
                   help="Every label > 0 by default: for BraTS labels, the whole tumour (what a FLAIR outline "
                        "marks). 1 and 4 give the tumour core, 4 alone the enhancing tumour.")
    st.caption(describe_labels(case.truth_label_values, case.truth_counted))

if case.truth is None:
    st.info(f"{case.name} has no ground truth. Upload its mask above, or open a sample from the gallery.")
    st.stop()

prediction = webapp.predict(model, case, tta=view.tta)
mask = webapp.current_mask(model, prediction, threshold)
truth = case.truth
volume = case.volume
report = compare(mask, truth, volume.spacing)
LARGEST_TRUTH_SLICE = int(np.argmax(truth.reshape(len(truth), -1).sum(axis=1))) + 1  # where a volume opens

fit = None
if case.truth_source and case.truth_source.startswith("uploaded mask"):
    # A mask of another scan of the same size passes the shape check and scores a meaningless Dice: question it.
    fit = mask_fit_warning(volume.pixels, truth, prediction.probabilities.mean)
    if fit:
        st.warning(fit, icon=":material/help:")


def scores() -> None:
    """The overlap metrics of the whole case at the app's threshold."""
    st.caption(f"{case.name} · ground truth: {case.truth_source} · threshold {threshold:.2f}"
               + (" · all slices pooled (per-volume metrics)" if volume.n_slices > 1 else ""))
    cards = st.columns(6)
    cards[0].metric("Dice", f"{report.dice:.3f}")
    cards[1].metric("IoU", f"{report.iou:.3f}")
    cards[2].metric("Precision", f"{report.precision:.3f}")
    cards[3].metric("Recall", f"{report.recall:.3f}")
    unit = "mm" if volume.spacing else "px"
    cards[4].metric("HD95", "n/a" if report.hd95 is None else f"{report.hd95:.1f} {unit}",
                    help="95th percentile distance between the outlines; undefined when either mask is empty")
    difference = report.predicted_pixels - report.truth_pixels
    if volume.voxel_volume_ml is not None and volume.n_slices > 1:
        cards[5].metric("Volume difference", f"{difference * volume.voxel_volume_ml:+.2f} mL")
    elif volume.pixel_area_mm2 is not None:
        cards[5].metric("Area difference", f"{difference * volume.pixel_area_mm2:+.1f} mm²")
    else:
        cards[5].metric("Area difference", f"{difference:+,} px", help="predicted minus ground truth")


def slice_by_slice(index: int) -> None:
    """Ground truth and prediction along the volume: where the model misses tumour or raises false alarms."""
    rows = slice_agreement(mask, truth)
    slices = [row["slice"] for row in rows]
    chart = go.Figure()
    chart.add_bar(x=slices, y=[row["truth_pixels"] for row in rows], name="ground truth", marker_color="#2ca02c",
                  customdata=[[row["dice"], row["verdict"]] for row in rows],
                  hovertemplate="slice %{x}: %{y} px, Dice %{customdata[0]:.2f} (%{customdata[1]})<extra></extra>")
    chart.add_bar(x=slices, y=[row["predicted_pixels"] for row in rows], name="prediction", marker_color="#d62728",
                  hovertemplate="slice %{x}: %{y} px predicted<extra></extra>")
    chart.add_vline(x=index + 1, line_dash="dot", line_color=CHART_COLOURS["threshold"], line_width=2)
    chart.update_layout(title="Tumour pixels per slice (click a bar to jump there)", xaxis_title="slice",
                        yaxis_title="tumour pixels", barmode="group", height=280, margin=dict(t=40, b=40),
                        legend=dict(orientation="h", y=1.12, x=1, xanchor="right"))
    st.plotly_chart(style_chart(chart, view.presenter), key="agreement_chart", on_select=jump_to_slice,
                    selection_mode="points")
    missed = [row["slice"] for row in rows if row["verdict"] == "missed"]
    alarms = [row["slice"] for row in rows if row["verdict"] == "false alarm"]
    with_tumour = sum(row["truth_pixels"] > 0 for row in rows)
    note = (f"{with_tumour} slice{'s hold' if with_tumour != 1 else ' holds'} tumour in the ground truth; at threshold "
            f"{threshold:.2f} the prediction misses {len(missed) or 'none'} of them entirely{listed(missed)} and "
            f"marks {len(alarms) or 'no'} tumour-free slice{'s' * (len(alarms) > 1)}{listed(alarms)}.")
    if missed:
        note += " Whole-slice misses are usually at the top or bottom of a lesion, where it is small and faint."
    st.caption(note)


def jump_to_slice() -> None:
    """A bar of the agreement chart was clicked: show (and keep) its slice."""
    webapp.slice_jumper("agreement_chart", "compare_slice")()
    webapp.keep("compare_slice")


def listed(slices: list[int]) -> str:
    """" (slice 4)" or " (slices 3, 9)"; nothing for none."""
    return f" (slice{'s' * (len(slices) > 1)} {', '.join(map(str, slices))})" if slices else ""


@st.fragment
def side_by_side() -> None:
    index = 0
    if volume.n_slices > 1:
        webapp.remember("compare_slice", LARGEST_TRUTH_SLICE)
        index = st.session_state["compare_slice"] - 1
        slice_by_slice(index)
        index = st.slider("Slice", 1, volume.n_slices, key="compare_slice", on_change=webapp.keep,
                          args=("compare_slice",)) - 1
    image = display_image(volume.pixels[index])
    columns = st.columns(4)
    columns[0].image(image, caption="Image", width="stretch")
    columns[1].image(overlay(image, truth[index], "green", style="contour"), caption="Ground truth",
                     width="stretch")
    columns[2].image(overlay(image, mask[index], "red", style="contour"), caption="Prediction", width="stretch")
    columns[3].image(error_map(image, mask[index], truth[index]), caption="Error map", width="stretch")
    legend = " ".join(
        f"<span style='background:rgb{colour};color:#000;padding:2px 8px;border-radius:4px'>{name}</span>"
        for name, colour in ERROR_COLOURS.items()
    )
    st.markdown(f"Error map: {legend}", unsafe_allow_html=True)


if step != LESSON:
    scores()
    side_by_side()
if step == SCORES:
    st.stop()

if not view.presenter:  # on a projector the part's button names it
    st.header("Threshold lesson")
st.markdown("Step the threshold down and watch the trade-off: **false positives** (magenta) grow as the model "
            "accepts less certain pixels, **false negatives** (blue) shrink. Dice is best where the two balance.")
curve = threshold_curve(prediction.probabilities.mean, truth, model.postprocessing)
lesson_thresholds = [row["threshold"] for row in curve]


def nearest_step(value: float) -> float:
    return min(lesson_thresholds, key=lambda step: abs(step - value))


def step_lesson(delta: int) -> None:
    """One step up or down; the steps stop at 0.05 and 0.95 rather than wrap around to the other end."""
    position = lesson_thresholds.index(nearest_step(st.session_state["lesson_threshold"]))
    position = min(max(position + delta, 0), len(lesson_thresholds) - 1)
    st.session_state["lesson_threshold"] = lesson_thresholds[position]


def start_play() -> None:
    """Play shows its starting point first; turned on at the lowest step, it plays the lesson again from the top."""
    if st.session_state["lesson_play"]:
        st.session_state["lesson_play_fresh"] = True
        if st.session_state["lesson_threshold"] == lesson_thresholds[0]:
            st.session_state["lesson_threshold"] = lesson_thresholds[-1]


def gallery_trade_offs(exclude: str) -> dict[str, list[dict]]:
    """The Dice curves of the gallery samples with tumour (but ``exclude``), computed once per session and model;
    their predictions come from (and stay in) the server's prediction cache."""
    store = st.session_state.setdefault("gallery_curves", {})
    key = (model.version, view.tta)
    if key not in store:
        curves = {}
        with st.spinner("Looking for a gallery sample that shows the trade-off…"):
            for entry in sample_index():
                if entry["tumour_pixels"]:
                    sample = load_sample(entry)
                    probabilities = webapp.predict(model, sample, tta=view.tta).probabilities.mean
                    curves[entry["image"]] = threshold_curve(probabilities, sample.truth, model.postprocessing)
        store[key] = curves
    return {name: rows for name, rows in store[key].items() if name != exclude}


def curve_note() -> None:
    """Why the lesson shows little on this case, when it does: a tumour missed at every threshold, a flat curve, or
    one that only rises or falls (no balance point), with a gallery sample that has one. Nothing when the mask itself
    was questioned above: then none of this says anything about the model."""
    if fit:
        return
    missed = missed_tumour_note(prediction.probabilities.mean, truth, model.postprocessing)
    if missed:
        st.info(missed, icon=":material/visibility_off:")
        return
    if balance_point(curve) is not None:
        return
    low, high = dice_range(curve)
    if is_flat(curve):
        note = (f"On this case Dice hardly changes with the threshold ({low:.2f} to {high:.2f}): the model is sure of "
                "almost every pixel.")
    else:
        direction = "rises" if curve[-1]["dice"] > curve[0]["dice"] else "falls"
        note = (f"On this case Dice only {direction} as the threshold goes up ({low:.2f} to {high:.2f}): there is "
                "no balance point to show.")
    others = gallery_trade_offs(case.name)
    suggestion = clearest_balance(others) or widest_trade_off(others)
    if suggestion is None:
        st.info(note + " Try another scan to see the trade-off.")
        return
    entry = next(entry for entry in sample_index() if entry["image"] == suggestion)
    other_low, other_high = dice_range(others[suggestion])
    peak = balance_point(others[suggestion])
    where = "" if peak is None else f", best {peak['dice']:.2f} at threshold {peak['threshold']:.2f}"
    st.info(note + f" Open a case whose Dice peaks between the ends, e.g. the gallery's {webapp.sample_label(entry)} "
                   f"({suggestion}, Dice {other_low:.2f} to {other_high:.2f}{where}), to see the trade-off.")
    st.button(f"Open {suggestion}", icon=":material/swap_horiz:", key="lesson_suggestion",
              on_click=lambda: webapp.set_case(load_sample(entry)))


if not view.presenter:  # on a projector, under the lesson: the picture, numbers and curve come first
    curve_note()
# The lesson starts where the app's threshold is (the nearest step); a finished Play turns itself off here, before
# its toggle is drawn (a widget's value cannot be changed once it is on the page).
st.session_state.setdefault("lesson_threshold", nearest_step(threshold))
if st.session_state.pop("lesson_play_done", False):
    st.session_state["lesson_play"] = False
playing = st.toggle("Play (steps down to the lowest threshold)", key="lesson_play", on_change=start_play)


@st.fragment(run_every=1.2 if playing else None)
def threshold_lesson() -> None:
    if playing and not st.session_state.pop("lesson_play_fresh", False):
        step_lesson(-1)
        if st.session_state["lesson_threshold"] == lesson_thresholds[0]:
            st.session_state["lesson_play_done"] = True
            st.rerun()  # the whole page: the toggle turns off and the timer stops
    lesson = nearest_step(st.session_state["lesson_threshold"])
    st.session_state["lesson_threshold"] = lesson
    # Inside the fragment, so the buttons know where the slider is after it moved; they stop at the ends.
    with st.container(horizontal=True, vertical_alignment="bottom"):
        st.button("Lower", icon=":material/arrow_back:", on_click=step_lesson, args=(-1,),
                  disabled=lesson == lesson_thresholds[0], key="lesson_lower")
        st.button("Higher", icon=":material/arrow_forward:", on_click=step_lesson, args=(1,),
                  disabled=lesson == lesson_thresholds[-1], key="lesson_higher")
        st.select_slider("Lesson threshold", options=lesson_thresholds, key="lesson_threshold")
    # The slice chosen under Scores and slices, kept while that part is not shown (on a projector).
    index = st.session_state.get(webapp.KEPT, {}).get("compare_slice", LARGEST_TRUTH_SLICE) - 1
    lesson_mask = binarize(prediction.probabilities.mean, model.postprocessing, lesson)
    false_positive = int((lesson_mask & ~truth).sum())
    false_negative = int((~lesson_mask & truth).sum())
    # A projector's picture is narrower, so picture, numbers and curve share one screen during Play.
    left, right = st.columns([1, 2] if view.presenter else [2, 3])
    left.image(error_map(display_image(volume.pixels[index]), lesson_mask[index], truth[index]),
               caption=f"Error map at threshold {lesson:.2f}",
               width=LESSON_PICTURE_WIDTH if view.presenter else "stretch")
    counts = right.columns(3)
    point = lesson_thresholds.index(lesson)
    counts[0].metric("Dice", f"{curve[point]['dice']:.3f}")
    counts[1].metric("False positives", f"{false_positive:,} px")
    counts[2].metric("False negatives", f"{false_negative:,} px")
    figure = go.Figure()
    figure.add_scatter(x=lesson_thresholds, y=[row["dice"] for row in curve], mode="lines+markers", name="Dice",
                       line_color=CHART_COLOURS["dice"])
    figure.add_scatter(x=[lesson], y=[curve[point]["dice"]], mode="markers", name="lesson threshold",
                       marker=dict(size=16, symbol="diamond", color="white", line=dict(color="black", width=1)))
    mark_best(figure, lesson)
    threshold_line(figure, threshold, "app threshold")  # at the bottom: at the top it would sit on the Dice curve
    figure.update_layout(xaxis_title="threshold", yaxis_title="Dice", yaxis_range=dice_axis(),
                         height=420 if view.presenter else 300, margin=dict(t=20, b=40),
                         legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
    right.plotly_chart(style_chart(figure, view.presenter), key="lesson_curve")


def dice_axis() -> list[float]:
    """The lesson curve's Dice range: around the curve, so a balance point a few hundredths high shows as a peak
    (the ticks say the scale); 0 to 1 for a curve that does not move."""
    low, high = dice_range(curve)
    if high - low < 0.005:
        return [0, 1.02]
    margin = max(0.02, (high - low) / 4)
    return [max(0.0, low - margin), min(1.02, high + margin)]


def mark_best(figure: go.Figure, lesson: float) -> None:
    """Once the lesson's threshold reaches or passes (stepping down) the threshold of the highest Dice, a star there:
    the balance point the lesson is about."""
    best = max(curve, key=lambda row: row["dice"])
    if lesson <= best["threshold"]:
        figure.add_scatter(x=[best["threshold"]], y=[best["dice"]], mode="markers+text", name="best Dice",
                           marker=dict(size=22, symbol="star", color=CHART_COLOURS["threshold"]),
                           text=[f"best {best['dice']:.2f} at {best['threshold']:.2f}"], textposition="bottom center")


threshold_lesson()
if view.presenter:
    curve_note()
