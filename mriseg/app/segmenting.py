"""The Segment page while a volume is being segmented: progress, and the middle slice's overlay as soon as it exists.

The preview's threshold masks use the 2D filters only (the 3D filter needs every slice); when the last slice is
done and its masks are cached, the page reruns and the final result replaces the preview.
"""

from __future__ import annotations

import streamlit as st

from mriseg.app import webapp
from mriseg.app.case import Case
from mriseg.app.links import DISPLAY_DEFAULTS
from mriseg.app.pending import PendingPrediction
from mriseg.app.threshold_view import ThresholdMasks, slice_threshold_masks
from mriseg.app.visualize import display_image, heatmap, to_png

POLL_S = 0.4  # how often the page looks at the background thread's progress
PRELIMINARY = "Preliminary: the 3D filter runs when every slice is done."


@st.fragment(run_every=POLL_S)
def segmenting_view(case: Case, pending: PendingPrediction, model: webapp.LoadedModel, threshold: float,
                    presenter: bool, tta: bool) -> None:
    """Progress of ``pending`` and, once the middle slice is segmented, its preliminary overlay."""
    if pending.finished.is_set():
        if pending.error is not None:
            st.session_state[webapp.PREDICTION_ERROR] = (webapp.prediction_key(model, case, tta), pending.error)
        st.rerun()  # the whole page: the final result (or the error) replaces the preview
    pending.watch(webapp.session_id())
    done, total = pending.slices_done, pending.n_slices
    label = model.segmenter.device_label
    text = (f"Segmenting slice {done} of {total} on {label}…" if done < total else
            "Every slice segmented; applying the 3D filter at every threshold…")
    st.progress(done / total, text=text)
    webapp.case_title(case.name)
    index = pending.middle
    if pending.preview is None:
        st.caption(f"Slice {index + 1}'s overlay appears as soon as it is segmented.")
        return
    if pending.preview_parts is None:
        pending.preview_parts = preview_parts(case, pending, model)
    masks, image, heat = pending.preview_parts
    st.caption(PRELIMINARY)  # above the pictures: on a laptop they fill the screen
    kept = st.session_state.get(webapp.KEPT, {})
    webapp.threshold_view(case, masks, index, threshold, image=image, heat=heat, presenter=presenter, tta=tta,
                          preliminary=True,
                          **{name: kept.get(name, default) for name, default in DISPLAY_DEFAULTS.items()})


def preview_parts(case: Case, pending: PendingPrediction,
                  model: webapp.LoadedModel) -> tuple[ThresholdMasks, webapp.Picture, webapp.Picture]:
    """The middle slice's masks at every threshold (2D filters only), picture and heat map; made once per volume."""
    index, total = pending.middle, pending.n_slices
    masks = slice_threshold_masks(pending.preview, index, total, model.postprocessing)
    image = display_image(case.volume.pixels[index])
    caption = f"Preliminary tumour outline, slice {index + 1} of {total}, at threshold {{threshold}}"
    return (masks, webapp.Picture(to_png(image), caption),
            webapp.Picture(to_png(heatmap(pending.preview, image)), "Tumour probability (dark: 0, yellow: 1)"))
