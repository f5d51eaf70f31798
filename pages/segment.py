"""Segment page: pick a sample or upload a scan, see the overlay and heat map, measure, download."""

import streamlit as st

from mriseg import webapp
from mriseg.case import measurements_csv
from mriseg.io import mask_to_nifti, mask_to_png
from mriseg.measure import tumour_size
from mriseg.visualize import COLOURS, display_image, heatmap, overlay, to_png

model, threshold = webapp.context()
st.title("Segment a brain MRI")
st.caption(f"A U-Net marks the FLAIR abnormality of lower-grade glioma. {webapp.DISCLAIMER}")

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
prediction = webapp.predict(model, case)


@st.fragment
def result_view() -> None:
    """Slice and overlay controls rerun only this part, from the cached probabilities."""
    volume = case.volume
    mask = webapp.current_mask(model, prediction, threshold)
    size = tumour_size(mask, volume)
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
    columns = st.columns(3)
    columns[0].image(image, caption="Input (normalised as the model sees it)", width="stretch")
    columns[1].image(overlaid, caption=f"Tumour at threshold {threshold:.2f}", width="stretch")
    columns[2].image(heatmap(prediction.probabilities.mean[index], image),
                     caption="Tumour probability (dark: 0, yellow: 1)", width="stretch")

    metrics = st.columns(4)
    slice_pixels = size["slice_pixels"][index]
    area_mm2 = volume.pixel_area_mm2
    area = f"{slice_pixels:,} px" + ("" if area_mm2 is None else f" · {slice_pixels * area_mm2:,.1f} mm²")
    metrics[0].metric("Tumour area, this slice", area)
    if volume.n_slices > 1:
        metrics[1].metric("Tumour, all slices", f"{size['pixels']:,} px")
        metrics[2].metric("Tumour volume", "unknown spacing" if size["volume_ml"] is None
                          else f"{size['volume_ml']:.2f} mL")
    metrics[3].metric(f"Inference on {prediction.device}", f"{prediction.seconds * 1000:,.0f} ms",
                      help="Time of the forward pass for this file; later views reuse the result")
    if area_mm2 is None:
        st.caption("This file records no pixel spacing, so sizes are in pixels only.")

    stem = case.name.split(".")[0]
    downloads = st.columns(3)
    if volume.n_slices == 1:
        downloads[0].download_button("Mask (PNG)", mask_to_png(mask[0]), f"{stem}_mask.png", "image/png")
    else:
        downloads[0].download_button("Mask (NIfTI)", mask_to_nifti(mask, volume), f"{stem}_mask.nii.gz",
                                     "application/gzip")
    downloads[1].download_button("Overlay (PNG)", to_png(overlaid), f"{stem}_overlay.png", "image/png")
    downloads[2].download_button("Measurements (CSV)", measurements_csv(case, mask, threshold),
                                 f"{stem}_measurements.csv", "text/csv")


result_view()
