"""Segment page: pick a sample or upload a scan, see the overlay and heat map, measure, download."""

from functools import partial

import cv2
import numpy as np
import plotly.graph_objects as go
import streamlit as st

from mriseg.app import webapp
from mriseg.app.case import measurements_csv, slice_agreement
from mriseg.app.links import DISPLAY_DEFAULTS
from mriseg.app.pending import PendingPrediction
from mriseg.app.segmenting import segmenting_view
from mriseg.app.threshold_view import THRESHOLD_STEPS
from mriseg.app.visualize import (
    COLOURS,
    display_image,
    heatmap,
    near_threshold,
    overlay,
    style_chart,
    to_png,
)
from mriseg.app.volume_viewer import volume_viewer
from mriseg.data.dicom_seg import seg_problem
from mriseg.data.io import mask_to_dicom_seg, mask_to_nifti, mask_to_png
from mriseg.metrics import tumour_size
from mriseg.postprocessing import removed_regions

view = webapp.context()
model, threshold = view.model, view.threshold
REMOVED_OUTLINE = (170, 170, 170)  # grey: neither the outline's colour nor one of the heat map's
if not view.presenter:  # on a projector the page list along the top names the page; the picture needs the room
    st.title("Segment a brain MRI")
    st.caption(f"A U-Net marks the FLAIR abnormality of lower-grade glioma. {webapp.DISCLAIMER}")
    webapp.remember("source", "Sample gallery")
    # The choice beside the gallery or the uploader, not above it: on a 1280x800 laptop the overlay and its
    # threshold slider then stay on the screen, even under an uploaded file's chip.
    choice, box = st.columns([1, 4])
    if choice.radio("Scan", ["Sample gallery", "Upload a file"], key="source", on_change=webapp.keep,
                    args=("source",)) == "Sample gallery":
        # A different label once a case is open makes a new, collapsed expander, so the result moves up.
        no_case = webapp.current_case() is None
        with box.expander("Sample gallery" if no_case else "Sample gallery: open another case", expanded=no_case):
            webapp.gallery()
    else:
        with box:
            webapp.upload_box()

case = webapp.current_case()
if case is None:
    st.info("Open a sample or upload a FLAIR scan to begin.")
    st.stop()
for warning in case.warnings:  # above the result: an outline on a file unlike FLAIR means nothing
    st.warning(warning, icon=":material/warning:")
prediction = webapp.prediction_or_pending(model, case, tta=view.tta)
if isinstance(prediction, PendingPrediction):  # a volume still being segmented: its middle slice first
    segmenting_view(case, prediction, model, threshold, view.presenter, view.tta)
    st.stop()
# The mask depends on the threshold only (a full rerun); the fragment below reuses it for display controls.
mask = webapp.current_mask(model, prediction, threshold)
size = tumour_size(mask, case.volume)
# Also once per threshold (a full rerun): what the filters took away, so a confident region without an outline is
# explained rather than vanishing.
removed = removed_regions(prediction.probabilities.mean, model.postprocessing, threshold)
# A file unlike brain FLAIR (a photograph, a CT, another body part) still gets an outline, to show what the model
# does, but its area measures nothing.
meaningless = bool(case.warnings)
NOT_MEANINGFUL = "not meaningful"


def truth_note(agreement: dict, highest_inside: float) -> str:
    """One sentence on how this slice's mask compares with the reference, so a miss is not mistaken for a bug.

    Args:
        agreement: this slice's row of :func:`slice_agreement`.
        highest_inside: the highest tumour probability the model gave inside the reference on this slice.
    """
    truth, predicted = agreement["truth_pixels"], agreement["predicted_pixels"]
    uploaded = (case.truth_source or "").startswith("uploaded")
    reference = "your uploaded mask" if uploaded else "the data set's manual mask"
    compare_link = "open **Compare with ground truth** for the error map"
    if agreement["verdict"] == "overlap":
        return (f":material/compare: {reference.capitalize()} marks {truth:,} px on this slice, the model "
                f"{predicted:,} px: Dice {agreement['dice']:.2f}; {compare_link}.")
    if agreement["verdict"] == "missed":
        lowest = THRESHOLD_STEPS[0]
        if highest_inside < lowest:  # no position of the slider brings it back: say so, not "lower the threshold"
            advice = (f"No threshold rescues it: the model's highest probability inside it is {highest_inside:.2f}, "
                      f"below the lowest threshold ({lowest:.2f}). The model did not see this tumour at all; "
                      f"{compare_link}.")
        else:
            advice = (f"Only a threshold below {highest_inside:.2f} (the model's highest probability inside it) "
                      f"can mark part of it; the heat map shows where the model hesitated, or {compare_link}.")
        return (f":material/error: {reference.capitalize()} marks {truth:,} px of tumour on this slice, but at "
                f"threshold {threshold:.2f} the model marks none: **a miss**. {advice}")
    if agreement["verdict"] == "false alarm":
        return (f":material/error: {reference.capitalize()} marks no tumour on this slice, but the model marks "
                f"{predicted:,} px: **a false alarm**. Raise the threshold to see it go, or {compare_link}.")
    return (f":material/check_circle: {reference.capitalize()} marks no tumour on this slice, and neither does the "
            "model.")


def unmeant(area: str) -> None:
    """The tumour area of a file unlike brain FLAIR, shown as not meaningful; the model's number stays in the help."""
    st.metric("Tumour area, this slice", NOT_MEANINGFUL,
              help=f"The outline covers {area} on this slice, but this file is not brain FLAIR (see the warning "
                   "above): the model never saw such images, so the number measures nothing.")
    st.caption("Outline and area not meaningful: this file is not brain FLAIR.")


def removed_note(index: int) -> None:
    """One line for what the filters removed on this slice (the most confident region), and how much elsewhere."""
    here = [region for region in removed if region["first_slice"] <= index <= region["last_slice"]]
    elsewhere = len(removed) - len(here)
    lines = []
    if here:
        region = here[0]
        first, last = region["first_slice"] + 1, region["last_slice"] + 1
        where = f"on slice {first}" if first == last else f"on slices {first}-{last}"
        more = f" Nor are {len(here) - 1} smaller or fainter ones here." if len(here) > 1 else ""
        lines.append(f":material/filter_alt: A region of {region['voxels']:,} px (peak probability "
                     f"{region['peak']:.2f}) {where} is not outlined: {removal_reason(region['reason'])} Grey "
                     f"outline on the heat map.{more}")
    if elsewhere and case.volume.n_slices > 1:
        lines.append(f"The filters remove {elsewhere} region{'s' * (elsewhere > 1)} on other slices at this "
                     "threshold.")
    if lines:
        st.caption(" ".join(lines))


def removal_reason(reason: str) -> str:
    """Why a filter of the model's post-processing removed a region, with the filter's setting."""
    config = model.postprocessing
    if reason == "speck":
        slice_area = case.volume.shape[1] * case.volume.shape[2]
        return (f"the 2D filter removes specks under {round(config.min_component_fraction * slice_area):,} px "
                f"({config.min_component_fraction:.1%} of the slice).")
    return f"the 3D filter {config.volume_filter_rule()}."


def measurements(index: int) -> None:
    """The numbers under (or, on a projector, beside) the pictures, and how the slice compares with a reference."""
    volume, probabilities = case.volume, prediction.probabilities
    slice_pixels = size["slice_pixels"][index]
    area_mm2 = volume.pixel_area_mm2
    area = f"{slice_pixels:,} px" + ("" if area_mm2 is None else f" · {slice_pixels * area_mm2:,.1f} mm²")
    if meaningless:
        unmeant(area)
    elif view.presenter:  # one number for the back row: the slice's area, or the volume of a whole scan
        if volume.n_slices > 1 and size["volume_ml"] is not None:
            st.metric("Tumour volume", f"{size['volume_ml']:.2f} mL")
        else:
            st.metric("Tumour area, this slice", area)
    else:
        metrics = st.columns(3)
        metrics[0].metric("Tumour area, this slice", area)
        if volume.n_slices > 1:
            metrics[1].metric("Tumour, all slices", f"{size['pixels']:,} px")
            if size["volume_ml"] is None:  # a short dash: a sentence here would be cut off at this width
                metrics[2].metric("Tumour volume", "—", help="The file records no voxel spacing, so the volume in "
                                  "mL is unknown. NIfTI and DICOM files carry it; PNG and TIFF stacks do not.")
            else:
                metrics[2].metric("Tumour volume", f"{size['volume_ml']:.2f} mL")
        notes = [f"Segmented in {prediction.seconds:,.1f} s on this server's {prediction.device.split(',')[0]}; "
                 "moving the threshold reuses that answer."]
        if area_mm2 is None:
            notes.append("This file records no pixel spacing, so sizes are in pixels only.")
        st.caption(" ".join(notes))
    if case.truth is not None:
        inside = probabilities.mean[index][case.truth[index]]
        agreement = slice_agreement(mask[index : index + 1], case.truth[index : index + 1])[0]
        st.markdown(truth_note(agreement, float(inside.max()) if inside.size else 0.0))


def uncertainty_view(image: np.ndarray, index: int) -> None:
    """Where the mirror pass disagrees, and which pixels a small threshold move would flip."""
    probabilities = prediction.probabilities
    st.markdown("**Where the model is unsure.** With uncertainty on, the model also segments the left-right "
                "mirrored scan and averages the two answers, so the outline and its area can shift by a few "
                "pixels. Left: how far apart the two probabilities are, in the colours of the probability map "
                "(black to dark purple: they agree, orange to yellow: they disagree). Right, in cyan: pixels whose "
                "probability is "
                "within ±0.1 of the threshold, so a small move of the slider would flip them; for a confident "
                "model they are a thin rim along the outline.")
    columns = st.columns(3)  # on a projector too: two larger pictures would push their captions off the screen
    columns[0].image(heatmap(np.clip(probabilities.std[index] * 2, 0, 1), image),
                     caption="Disagreement between the two views: |original − mirrored|", width="stretch")
    flips = near_threshold(probabilities.mean[index], threshold)
    columns[1].image(overlay(image, flips, "cyan", 0.8), caption=f"{int(flips.sum()):,} pixels within ±0.1 of "
                     "the threshold (cyan): a small move of the slider flips them", width="stretch")


OVERLAY, UNCERTAINTY, SLICES, VIEWER = "Overlay", "Uncertainty", "Slices", "Three planes and 3D"


def presenter_part(probabilities) -> str | None:
    """On a projector, one part of the result at a time, each within the screen: the overlay, where the model is
    unsure (with uncertainty on), the tumour slice by slice, the volume viewer; None (everything) off the projector or
    with nothing to choose."""
    parts = [OVERLAY] + [UNCERTAINTY] * (probabilities.std is not None) + [SLICES, VIEWER] * (case.volume.n_slices > 1)
    return webapp.presenter_step("segment_part", parts) if len(parts) > 1 else None


@st.fragment
def result_view() -> None:
    """Slice and overlay controls rerun only this part, from the cached probabilities."""
    volume = case.volume
    probabilities = prediction.probabilities
    webapp.case_title(case.name)
    part = presenter_part(probabilities)
    row = st.columns([5, 1], vertical_alignment="bottom")
    if volume.n_slices > 1:
        webapp.remember("slice", (size["largest_slice"] or volume.n_slices // 2) + 1)
        index = row[0].slider("Slice", 1, volume.n_slices, key="slice", on_change=webapp.keep, args=("slice",),
                              help="Starts on the slice with the largest predicted tumour") - 1
    else:
        index = 0
    with row[1].popover("Display", icon=":material/palette:", width="stretch"):
        # Defaults go into the session state, not the widgets: the app keeps these values across pages.
        for name, default in DISPLAY_DEFAULTS.items():
            webapp.remember(name, default)
        opacity = st.slider("Overlay opacity", 0.0, 1.0, step=0.05, key="opacity", on_change=webapp.keep,
                            args=("opacity",))
        colour = st.selectbox("Colour", list(COLOURS), key="colour", on_change=webapp.keep, args=("colour",))
        style = st.radio("Style", ["fill", "contour"], horizontal=True, key="style", on_change=webapp.keep,
                         args=("style",))

    image = display_image(volume.pixels[index])
    probability_map = heatmap(probabilities.mean[index], image)
    removed_here = (probabilities.mean[index] >= threshold) & ~mask[index]
    if removed_here.any():
        probability_map = overlay(probability_map, removed_here, REMOVED_OUTLINE, style="contour")
    caption = ("Outline not meaningful: this file is not brain FLAIR · threshold {threshold}" if meaningless else
               "Tumour at threshold {threshold}")
    # On a projector the numbers stand beside the pictures, so all of it fits one 1920x1080 screen.
    picture_area, number_area = st.columns([4, 1]) if view.presenter else (st.container(), st.container())
    if part in (None, OVERLAY):
        with picture_area:
            webapp.threshold_view(
                case, webapp.masks_for_every_threshold(model, case, prediction, view.tta), index, threshold,
                image=webapp.Picture(to_png(image), caption),
                heat=webapp.Picture(to_png(probability_map), "Tumour probability (dark: 0, yellow: 1)" + (
                    "; grey outline: removed by the filters" if removed_here.any() else "")),
                input_picture=None if view.presenter else webapp.Picture(to_png(image),
                                                                         "Input, as the model sees it"),
                colour=colour, opacity=opacity, style=style, presenter=view.presenter, tta=view.tta,
            )
    if part in (None, OVERLAY, UNCERTAINTY):
        with number_area:
            measurements(index)
            removed_note(index)
    if probabilities.std is not None and part in (None, UNCERTAINTY):
        with picture_area if view.presenter else st.container():  # on a laptop: under the numbers
            uncertainty_view(image, index)

    if volume.n_slices > 1 and part in (None, SLICES):
        slice_chart(volume, size, index)
    if volume.n_slices > 1 and part in (None, VIEWER):
        viewer(volume, mask, index)

    stem = case.name.split(".")[0]
    downloads = st.columns(4 if volume.dicom_headers is not None else 3)
    # A scan placed in scanner space (NIfTI, DICOM) gets its mask back in that space, even a single slice.
    if volume.n_slices == 1 and volume.affine is None:
        downloads[0].download_button("Mask (PNG)", mask_to_png(mask[0]), f"{stem}_mask.png", "image/png")
    else:
        # Made when asked for: compressing a whole volume's mask on every slider move would cost every student.
        downloads[0].download_button("Mask (NIfTI)", partial(mask_to_nifti, mask, volume), f"{stem}_mask.nii.gz",
                                     "application/gzip")
    # Twice the scan's size, so the outline stays sharp on a slide; named with its slice.
    large_image = cv2.resize(image, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
    large_mask = cv2.resize(mask[index].astype(np.uint8), None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST) > 0
    large = overlay(large_image, large_mask, colour, opacity, style)
    name = f"{stem}_slice{index + 1:03d}_overlay.png" if volume.n_slices > 1 else f"{stem}_overlay.png"
    downloads[1].download_button("Overlay (PNG)", to_png(large), name, "image/png")
    downloads[2].download_button("Measurements (CSV)", partial(measurements_csv, case, mask, threshold),
                                 f"{stem}_measurements.csv", "text/csv")
    if volume.dicom_headers is not None:
        dicom_seg_download(downloads[3], mask, volume, stem)


def dicom_seg_download(column, mask: np.ndarray, volume, stem: str) -> None:
    """A DICOM scan's mask as a DICOM SEG that references its series (PACS, OHIF, 3D Slicer), made when asked for;
    a series no SEG can be made of (stripped of the UIDs a SEG references, say) gets a line saying why instead."""
    problem = seg_problem(volume.dicom_headers)
    if problem:
        column.caption(f"No DICOM SEG: {problem}. The NIfTI mask opens in 3D Slicer.")
        return
    column.download_button("Mask (DICOM SEG)", partial(mask_to_dicom_seg, mask, volume, model_version=model.version),
                           f"{stem}_seg.dcm", "application/dicom",
                           help="Opens over its series in OHIF, 3D Slicer or a PACS (Orthanc, say).")


def jump_to_slice() -> None:
    """A bar of the per-slice chart was clicked: show (and keep) its slice."""
    webapp.slice_jumper("slice_chart", "slice")()
    webapp.keep("slice")


def slice_chart(volume, size: dict, index: int) -> None:
    """Per-slice tumour area; click a bar to go there."""
    chart = go.Figure(go.Bar(x=list(range(1, volume.n_slices + 1)), y=size["slice_pixels"],
                             marker_color=["#f0b429" if i == index else "#4c78a8" for i in range(volume.n_slices)]))
    title = "Tumour area per slice" + (f" ({NOT_MEANINGFUL}: not brain FLAIR)" if meaningless else "")
    chart.update_layout(title=f"{title} (click a bar to jump there)", xaxis_title="slice",
                        yaxis_title="tumour pixels", height=260, margin=dict(t=40, b=40))
    st.plotly_chart(style_chart(chart, view.presenter), key="slice_chart", on_select=jump_to_slice,
                    selection_mode="points")


def viewer(volume, mask: np.ndarray, index: int) -> None:
    """The volume viewer: three planes linked by a crosshair and a 3D rendering, the threshold moving in the
    browser."""
    masks = webapp.masks_for_every_threshold(model, case, prediction, view.tta)
    files = webapp.volume_viewer_files(model, case, masks, view.tta)
    if files.inexact_voxels:
        st.caption(f"At {files.inexact_voxels:,} voxels the 3D viewer's outline may differ from the slices' at some "
                   "thresholds (the 3D filter drops and keeps them again as the threshold moves).")
    kept = st.session_state.get(webapp.KEPT, {})
    # The crosshair starts on the slice shown, through the middle of its tumour (or of the slice).
    rows, columns = np.nonzero(mask[index]) if mask[index].any() else ([volume.shape[1] // 2], [volume.shape[2] // 2])
    crosshair = (index, int(np.median(rows)), int(np.median(columns)))
    volume_viewer(volume, files, threshold, crosshair, colour=kept.get("colour", "red"),
                  opacity=kept.get("opacity", DISPLAY_DEFAULTS["opacity"]), presenter=view.presenter,
                  on_threshold_change=partial(webapp.threshold_released, "volume_viewer"))
    webapp.follow_released_threshold()
    if volume.spacing is None:
        st.caption("This file records no voxel spacing: the 3D viewer assumes slices 4 times thicker than a pixel, "
                   "for display only; proportions may be off.")


result_view()
