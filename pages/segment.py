"""Segment page: pick a sample or upload a scan, see the overlay and heat map, measure, download."""

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from mriseg import webapp
from mriseg.case import measurements_csv, slice_agreement
from mriseg.io import mask_to_nifti, mask_to_png
from mriseg.measure import tumour_size
from mriseg.visualize import COLOURS, display_image, heatmap, near_threshold, overlay, reformat, to_png

view = webapp.context()
model, threshold = view.model, view.threshold
st.title("Segment a brain MRI")
st.caption(f"A U-Net marks the FLAIR abnormality of lower-grade glioma. {webapp.DISCLAIMER}")

if not view.presenter:
    if st.radio("Scan", ["Sample gallery", "Upload a file"], horizontal=True, key="source") == "Sample gallery":
        # A different label once a case is open makes a new, collapsed expander, so the result moves up.
        no_case = webapp.current_case() is None
        with st.expander("Sample gallery" if no_case else "Sample gallery: open another case", expanded=no_case):
            webapp.gallery()
    else:
        webapp.upload_box()

case = webapp.current_case()
if case is None:
    st.info("Open a sample or upload a FLAIR scan to begin.")
    st.stop()
for warning in case.warnings:  # above the result: an outline on a file unlike FLAIR means nothing
    st.warning(warning, icon=":material/warning:")
prediction = webapp.predict(model, case, tta=view.tta)
# The mask depends on the threshold only (a full rerun); the fragment below reuses it for display controls.
mask = webapp.current_mask(model, prediction, threshold)
size = tumour_size(mask, case.volume)


def truth_note(agreement: dict) -> str:
    """One sentence on how this slice's mask compares with the manual one, so a miss is not mistaken for a bug."""
    truth, predicted = agreement["truth_pixels"], agreement["predicted_pixels"]
    compare_link = "open **Compare with ground truth** for the error map"
    if agreement["verdict"] == "overlap":
        return (f":material/compare: The data set's manual mask marks {truth:,} px on this slice, the model "
                f"{predicted:,} px: Dice {agreement['dice']:.2f}; {compare_link}.")
    if agreement["verdict"] == "missed":
        return (f":material/error: The manual mask marks {truth:,} px of tumour on this slice, but at threshold "
                f"{threshold:.2f} the model marks none: **a miss**. Look at the heat map for where the model "
                f"hesitated, lower the threshold, or {compare_link}.")
    if agreement["verdict"] == "false alarm":
        return (f":material/error: The manual mask marks no tumour on this slice, but the model marks {predicted:,} "
                f"px: **a false alarm**. Raise the threshold to see it go, or {compare_link}.")
    return ":material/check_circle: The manual mask marks no tumour on this slice, and neither does the model."


@st.fragment
def result_view() -> None:
    """Slice and overlay controls rerun only this part, from the cached probabilities."""
    volume = case.volume
    probabilities = prediction.probabilities
    st.subheader(case.name)
    if volume.n_slices > 1:
        st.session_state.setdefault("slice", (size["largest_slice"] or volume.n_slices // 2) + 1)
        index = st.slider("Slice", 1, volume.n_slices, key="slice",
                          help="Starts on the slice with the largest predicted tumour") - 1
    else:
        index = 0
    controls = st.columns(3)
    opacity = controls[0].slider("Overlay opacity", 0.0, 1.0, 0.45, 0.05, key="opacity")
    colour = controls[1].selectbox("Colour", list(COLOURS), key="colour")
    style = controls[2].radio("Style", ["fill", "contour"], horizontal=True, key="style")

    image = display_image(volume.pixels[index])
    overlaid = overlay(image, mask[index], colour, opacity, style)
    probability_map = heatmap(probabilities.mean[index], image)
    if view.presenter:  # two large pictures for a projector
        columns = st.columns(2)
        columns[0].image(overlaid, caption=f"Tumour at threshold {threshold:.2f}", width="stretch")
        columns[1].image(probability_map, caption="Tumour probability (dark: 0, yellow: 1)", width="stretch")
    else:
        columns = st.columns(3)
        columns[0].image(image, caption="Input (normalised as the model sees it)", width="stretch")
        columns[1].image(overlaid, caption=f"Tumour at threshold {threshold:.2f}", width="stretch")
        columns[2].image(probability_map, caption="Tumour probability (dark: 0, yellow: 1)", width="stretch")

    if probabilities.std is not None:
        st.markdown("**Where the model is unsure.** The model also segmented the mirrored scan: bright pixels on "
                    "the left are where the two answers disagree, and the cyan pixels on the right have a "
                    "probability within ±0.1 of the threshold, so a small change would flip their decision.")
        columns = st.columns(3 if not view.presenter else 2)
        columns[0].image(heatmap(np.clip(probabilities.std[index] * 2, 0, 1), image),
                         caption="Disagreement between the views (standard deviation x 2)", width="stretch")
        flips = near_threshold(probabilities.mean[index], threshold)
        columns[1].image(overlay(image, flips, "cyan", 0.8), caption=f"{int(flips.sum()):,} pixels within ±0.1 of "
                         f"the threshold", width="stretch")

    metrics = st.columns(4)
    slice_pixels = size["slice_pixels"][index]
    area_mm2 = volume.pixel_area_mm2
    area = f"{slice_pixels:,} px" + ("" if area_mm2 is None else f" · {slice_pixels * area_mm2:,.1f} mm²")
    metrics[0].metric("Tumour area, this slice", area)
    if volume.n_slices > 1:
        metrics[1].metric("Tumour, all slices", f"{size['pixels']:,} px")
        if size["volume_ml"] is None:  # a short dash: a sentence here would be cut off at this width
            metrics[2].metric("Tumour volume", "—", help="The file records no voxel spacing, so the volume in mL "
                              "is unknown. NIfTI and DICOM files carry it; PNG and TIFF stacks do not.")
        else:
            metrics[2].metric("Tumour volume", f"{size['volume_ml']:.2f} mL")
    metrics[3].metric(f"Inference on {prediction.device}", f"{prediction.seconds * 1000:,.0f} ms",
                      help="Time of the forward pass for this file; later views reuse the result")
    if area_mm2 is None:
        st.caption("This file records no pixel spacing, so sizes are in pixels only.")
    if case.truth is not None:
        st.markdown(truth_note(slice_agreement(mask[index : index + 1], case.truth[index : index + 1])[0]))

    if volume.n_slices > 1:
        volume_views(volume, mask, size, index)

    stem = case.name.split(".")[0]
    downloads = st.columns(3)
    # A scan placed in scanner space (NIfTI, DICOM) gets its mask back in that space, even a single slice.
    if volume.n_slices == 1 and volume.affine is None:
        downloads[0].download_button("Mask (PNG)", mask_to_png(mask[0]), f"{stem}_mask.png", "image/png")
    else:
        downloads[0].download_button("Mask (NIfTI)", mask_to_nifti(mask, volume), f"{stem}_mask.nii.gz",
                                     "application/gzip")
    downloads[1].download_button("Overlay (PNG)", to_png(overlaid), f"{stem}_overlay.png", "image/png")
    downloads[2].download_button("Measurements (CSV)", measurements_csv(case, mask, threshold),
                                 f"{stem}_measurements.csv", "text/csv")


def volume_views(volume, mask: np.ndarray, size: dict, index: int) -> None:
    """Per-slice tumour area (click a bar to go there) and sagittal/coronal reformats."""
    chart = go.Figure(go.Bar(x=list(range(1, volume.n_slices + 1)), y=size["slice_pixels"],
                             marker_color=["#f0b429" if i == index else "#4c78a8" for i in range(volume.n_slices)]))
    chart.update_layout(title="Tumour area per slice (click a bar to jump there)", xaxis_title="slice",
                        yaxis_title="tumour pixels", height=260, margin=dict(t=40, b=40))
    st.plotly_chart(chart, key="slice_chart", on_select=webapp.slice_jumper("slice_chart", "slice"),
                    selection_mode="points")

    rows, columns = np.nonzero(mask[index]) if mask[index].any() else ([volume.shape[1] // 2], [volume.shape[2] // 2])
    st.session_state.setdefault("coronal_row", int(np.median(rows)) + 1)
    st.session_state.setdefault("sagittal_column", int(np.median(columns)) + 1)
    sliders = st.columns(2)
    row = sliders[0].slider("Coronal plane (image row)", 1, volume.shape[1], key="coronal_row") - 1
    column = sliders[1].slider("Sagittal plane (image column)", 1, volume.shape[2], key="sagittal_column") - 1
    # Without spacing, a typical FLAIR protocol's ~4:1 slice-to-pixel ratio keeps the picture readable.
    stretch = 4.0 if volume.spacing is None else volume.spacing[2] / volume.spacing[0]
    pictures = st.columns(2)
    for picture, plane, position in ((pictures[0], "coronal", row), (pictures[1], "sagittal", column)):
        image = reformat(volume.pixels, plane, position, stretch)
        outline = reformat(mask.astype(np.float32), plane, position, stretch) > 0.5
        picture.image(overlay(display_image(image), outline, "red", style="contour"),
                      caption=f"{plane.capitalize()} reformat, top of the head up", width="stretch")
    if volume.spacing is None:
        st.caption("This file records no slice spacing: the reformats assume slices 4 times thicker than a pixel, "
                   "for display only; proportions may be off.")


result_view()
