"""Streamlit glue shared by the pages: the cached model, the bounded prediction cache, the sidebar, the case.

Pages stay thin: they call :func:`context` for the model and threshold, :func:`current_case` for what is being
looked at and :func:`predict` for probabilities, which are computed once per file content, model version,
device and augmentation setting and then reused by every page and every session.
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import streamlit as st
import torch
from streamlit.runtime.scriptrunner import get_script_run_ctx
from streamlit.runtime.uploaded_file_manager import UploadedFile

from mriseg.app import links
from mriseg.app.access import setting
from mriseg.app.cache import LRUCache
from mriseg.app.case import Case, case_from_bytes, load_sample, sample_index
from mriseg.app.explain import FeatureMaps, feature_maps
from mriseg.app.forward_pass import ForwardPassLock
from mriseg.app.pending import PendingPrediction
from mriseg.app.threshold_view import (
    COMPONENT_CSS,
    COMPONENT_HTML,
    COMPONENT_JS,
    THRESHOLD_STEPS,
    ThresholdMasks,
    data_url,
    overlay_colour,
    step_of,
    threshold_masks,
)
from mriseg.app.volume_viewer import ViewerFiles, viewer_files
from mriseg.errors import InputError
from mriseg.inference import Probabilities, Segmenter
from mriseg.postprocessing import PostprocessingConfig, binarize
from mriseg.weights.bundle import load_segmenter, model_version, read_config
from mriseg.weights.hub import WeightsSource, integrity_notice, resolve_weights

DISCLAIMER = "For teaching and research only: not a medical device, never for diagnosis."
PREDICTION_CACHE_ENTRIES = 24
PREDICTION_CACHE_BYTES = 1 << 30  # probabilities of ~16 full 256-slice 256x256 volumes


@dataclass(frozen=True)
class LoadedModel:
    """The segmenter with where its weights came from and their config; ``notice``: why the configured Hub copy
    is not the one serving, for every page to show (None when it is, or when none is configured)."""

    segmenter: Segmenter
    source: WeightsSource
    config: dict
    notice: str | None = None

    @property
    def version(self) -> str:
        return model_version(self.config)

    @property
    def postprocessing(self) -> PostprocessingConfig:
        return self.segmenter.postprocessing

    def describe_source(self) -> str:
        if self.source.kind == "bundled":
            return "bundled weights (`weights/`)"
        how = "downloaded from the Hub" if self.source.kind == "hub" else "HF cache"
        return f"`{self.source.detail}` ({how})"


@dataclass(frozen=True)
class Prediction:
    probabilities: Probabilities
    seconds: float
    device: str


@st.cache_resource(show_spinner="Loading the model…")
def load_model(device: str) -> LoadedModel:
    """Resolve and load the weights once per process and device. A Hub or HF-cache copy that fails its checks
    is not used: the bundled weights serve, and the model's ``notice`` says so (the CLI refuses such a copy; a
    class keeps working, but never without knowing)."""
    source = resolve_weights(setting("MRISEG_HF_REPO") or "", setting("MRISEG_HF_REVISION"))
    notice = None
    try:
        segmenter = load_segmenter(source.folder, device=device)
    except InputError as error:
        if source.kind == "bundled":
            raise
        notice = integrity_notice(source, error)
        source = resolve_weights(repo_id="")
        segmenter = load_segmenter(source.folder, device=device)
    return LoadedModel(segmenter, source, read_config(source.folder), notice)


def warm_up(device: str = "auto") -> LoadedModel:
    """Load the model and run it once on every gallery sample, before the first visitor comes.

    For ``mriseg serve``: the imports, the weights, the first forward pass (where PyTorch sets up its kernels)
    and the gallery's predictions then cost the first student nothing. The caches filled are the ones the app
    uses (:func:`load_model` and :func:`prediction_cache` are process-wide).
    """
    model = load_model(device)
    for entry in sample_index():
        case = load_sample(entry)
        key = (case.digest, model.version, str(model.segmenter.device), False)
        if prediction_cache().get(key) is None:
            started = time.perf_counter()
            probabilities = model.segmenter.predict(case.volume.pixels)
            prediction = Prediction(probabilities, time.perf_counter() - started, model.segmenter.device_label)
            prediction_cache().put(key, prediction)
            threshold_cache().put(key, threshold_masks(probabilities.mean, model.postprocessing))
    return model


@st.cache_resource(show_spinner=False)
def prediction_cache() -> LRUCache:
    """One bounded cache for the whole server, so memory stays flat as sessions come and go."""
    return LRUCache(PREDICTION_CACHE_ENTRIES, PREDICTION_CACHE_BYTES, size_of=_prediction_bytes)


def _prediction_bytes(prediction: Prediction) -> int:
    std = prediction.probabilities.std
    return prediction.probabilities.mean.nbytes + (0 if std is None else std.nbytes)


# One forward pass at a time in this process, the short ones first (see forward_pass.py).
FORWARD_PASS = ForwardPassLock()


def predict(model: LoadedModel, case: Case, tta: bool = False) -> Prediction:
    """Probabilities for the case, from the cache or computed now with a progress bar."""
    key = (case.digest, model.version, str(model.segmenter.device), tta)
    # One placeholder whether or not the progress bar is needed: elements after it keep their place in the page,
    # so the next run does not rebuild them (the threshold view would lose its decoded pictures and the focus).
    slot = st.empty()
    cache = prediction_cache()
    cached = cache.get(key)
    if cached is not None:
        return cached
    pending = pending_predictions().get(key)
    if pending is not None:  # the Segment page is segmenting this volume: wait for it rather than run it twice
        _wait_for(pending, slot)
        cached = cache.get(key)
        if cached is not None:
            return cached
    slices = case.volume.n_slices
    label = model.segmenter.device_label
    bar = slot.progress(0.0, text=f"Segmenting {slices} slice{'s' * (slices > 1)} on {label}…")
    started = time.perf_counter()
    with FORWARD_PASS.urgent():
        probabilities = model.segmenter.predict(
            case.volume.pixels, tta=tta,
            progress=lambda done, total: bar.progress(done / total,
                                                      text=f"Segmenting slice {done} of {total} on {label}…"),
        )
    bar.empty()
    prediction = Prediction(probabilities, time.perf_counter() - started, label)
    cache.put(key, prediction)
    return prediction


@st.cache_resource(show_spinner=False)
def pending_predictions() -> dict[tuple, PendingPrediction]:
    """Volumes being segmented in the background, server-wide, by prediction key: one thread per file."""
    return {}


# Held while a session looks at the caches and the pending predictions and starts one: two sessions opening the same
# volume share one thread.
_PENDING = threading.Lock()
PREDICTION_ERROR = "prediction_error"  # session state: (key, message) of a background prediction that failed


def session_id() -> str:
    return get_script_run_ctx().session_id


def prediction_key(model: LoadedModel, case: Case, tta: bool) -> tuple:
    """What a prediction depends on: the file's content, the model version, the device, the mirror pass."""
    return case.digest, model.version, str(model.segmenter.device), tta


def prediction_or_pending(model: LoadedModel, case: Case, tta: bool = False) -> Prediction | PendingPrediction:
    """The case's prediction; a volume of more than two batches of slices not yet segmented comes back pending.

    The pending prediction runs in a background thread, middle slices first, and caches the prediction and its
    threshold masks when done, so the page can show the middle slice within seconds and never waits for the rest.
    Up to two batches (the gallery's 20-slice patient) the whole volume takes about as long as its middle batch.
    """
    if case.volume.n_slices <= 2 * model.segmenter.batch_size:
        return predict(model, case, tta)
    key = prediction_key(model, case, tta)
    st.empty()  # predict()'s placeholder, so the page keeps one layout
    failed = st.session_state.get(PREDICTION_ERROR)
    if failed is not None and failed[0] == key:
        st.error(f"{case.name}: segmentation failed: {failed[1]}", icon=":material/block:")
        st.stop()
    registry, session = pending_predictions(), session_id()
    with _PENDING:
        for done in [other for other, pending in registry.items() if pending.finished.is_set()]:
            del registry[done]  # their results are in the caches (or they failed, or were abandoned)
        pending = registry.get(key)
        cached = prediction_cache().get(key) if pending is None else None
        if cached is not None:
            return cached
        if pending is None:
            finish = partial(_finish, key, model, prediction_cache(), threshold_cache())
            pending = registry[key] = PendingPrediction(model.segmenter, case.volume.pixels, tta, FORWARD_PASS,
                                                        finish)
            pending.watch(session)
            pending.start()
    previous = registry.get(st.session_state.get("watched_prediction"))
    if previous is not None and previous is not pending:
        previous.leave(session)  # a second upload while the first is pending: the first stops unless others wait
    st.session_state["watched_prediction"] = key
    pending.watch(session)
    return pending


def _finish(key: tuple, model: LoadedModel, predictions: LRUCache, masks: LRUCache, probabilities: Probabilities,
            seconds: float) -> None:
    """In the pending prediction's thread: cache the prediction (other pages use it at once), then its masks."""
    predictions.put(key, Prediction(probabilities, seconds, model.segmenter.device_label))
    masks.put(key, threshold_masks(probabilities.mean, model.postprocessing))


def _wait_for(pending: PendingPrediction, slot) -> None:
    """Wait for a pending prediction in ``slot`` with a progress bar (the script's thread waits, not the server)."""
    bar = slot.progress(0.0)
    while not pending.finished.wait(0.25):
        pending.watch(session_id())
        done, total = pending.slices_done, pending.n_slices
        bar.progress(done / total, text=f"Segmenting slice {done} of {total}…")
    slot.empty()


@st.cache_resource(show_spinner=False)
def feature_cache() -> LRUCache:
    """Feature maps are large (all channels of every stage): keep only a few, server-wide."""
    return LRUCache(8, 256 << 20, size_of=lambda maps: sum(a.nbytes for a in maps.maps.values()))


def feature_maps_for(model: LoadedModel, case: Case, index: int, member: int = 0) -> FeatureMaps:
    """Feature maps of one slice of the case (inside U-Net ``member`` of an ensemble), cached beside its prediction."""
    key = (case.digest, model.version, str(model.segmenter.device), index, member)
    cache = feature_cache()
    maps = cache.get(key)
    if maps is None:
        with FORWARD_PASS.urgent():
            maps = feature_maps(model.segmenter, case.volume.pixels, index, member)
        cache.put(key, maps)
    return maps


def current_mask(model: LoadedModel, prediction: Prediction, threshold: float) -> np.ndarray:
    return binarize(prediction.probabilities.mean, model.postprocessing, threshold)


@st.cache_resource(show_spinner=False)
def threshold_cache() -> LRUCache:
    """The packed masks of every threshold step are small PNGs: keep as many cases as the prediction cache."""
    return LRUCache(PREDICTION_CACHE_ENTRIES, 256 << 20, size_of=lambda masks: masks.nbytes)


def masks_for_every_threshold(model: LoadedModel, case: Case, prediction: Prediction, tta: bool) -> ThresholdMasks:
    """The case's masks at every threshold step, packed for the browser; computed once per prediction."""
    key = (case.digest, model.version, str(model.segmenter.device), tta)
    slot = st.empty()  # as in predict(): the same page layout whether or not the masks are computed now
    cache = threshold_cache()
    masks = cache.get(key)
    if masks is None:
        with slot, st.spinner("Preparing the threshold slider…"):
            masks = threshold_masks(prediction.probabilities.mean, model.postprocessing)
        cache.put(key, masks)
    return masks


@st.cache_resource
def viewer_cache() -> LRUCache:
    """The volume viewer's files (the scan and the masks' code, gzipped): about 1 MB a BraTS-size volume."""
    return LRUCache(PREDICTION_CACHE_ENTRIES, 128 << 20,
                    size_of=lambda files: len(files.scan) + len(files.code))


def volume_viewer_files(model: LoadedModel, case: Case, masks: ThresholdMasks, tta: bool) -> ViewerFiles:
    """The files the volume viewer fetches for this case; made once per prediction, shared by every session."""
    key = prediction_key(model, case, tta)
    cache = viewer_cache()
    files = cache.get(key)
    if files is None:
        files = viewer_files(case.volume, masks)
        cache.put(key, files)
    return files


_THRESHOLD_VIEW = st.components.v2.component("mriseg_threshold_view", html=COMPONENT_HTML, css=COMPONENT_CSS,
                                             js=COMPONENT_JS)


@dataclass(frozen=True)
class Picture:
    """An image for the threshold view: its PNG and caption."""

    png: bytes
    caption: str


def threshold_released(key: str) -> None:
    """The threshold slider of component ``key`` (the threshold view, the volume viewer) was released: its value
    becomes the shared threshold, and :func:`follow_released_threshold` reruns the whole page."""
    chosen = st.session_state[key]["threshold"]
    if chosen is not None:
        st.session_state["threshold"] = float(chosen)
        st.session_state["threshold_moved_in_view"] = True


def follow_released_threshold() -> None:
    """After a component with a threshold slider: the components sit in fragments, whose own rerun would leave the
    page's numbers behind, so a released threshold reruns the whole page."""
    if st.session_state.pop("threshold_moved_in_view", False):
        st.rerun()


def threshold_view(case: Case, masks: ThresholdMasks, index: int, threshold: float, image: Picture,
                   heat: Picture, input_picture: Picture | None = None, colour: str = "red", opacity: float = 0.45,
                   style: str = "fill", presenter: bool = False, tta: bool = False,
                   preliminary: bool = False) -> None:
    """The overlay with a threshold slider that redraws in the browser; the released value becomes the threshold.

    Args:
        case: the case shown (its digest keys the decoded pictures in the browser).
        masks: :func:`masks_for_every_threshold` of the case.
        index: the slice shown.
        threshold: the shared threshold the slider starts at.
        image: the slice as displayed (the overlay is drawn on it).
        heat: the probability heat map shown beside it.
        input_picture: the slice without overlay, shown first when given.
        colour, opacity, style: how the mask is drawn (style "fill" or "contour").
        presenter: larger text, pictures sized to leave the numbers on a projector screen.
        tta: whether the probabilities include the mirror pass (part of the pictures' identity).
        preliminary: ``masks`` are one slice's, without the 3D filter, while the volume is being segmented.
    """
    volume = case.volume
    data = {
        "pictures_key": f"{case.digest}:{index}:{tta}:{preliminary}",
        "preliminary": preliminary,
        "image_url": data_url(image.png),
        "masks_url": data_url(masks.slice_png(index)),
        "tiles": masks.tiles,
        "steps": list(THRESHOLD_STEPS),
        "step": step_of(threshold),
        "colour": overlay_colour(colour),
        "opacity": float(opacity),
        "style": style,
        "slice_counts": masks.slice_counts[index].astype(int).tolist(),
        "not_meaningful": "this file is not brain FLAIR" if case.warnings else None,
        "volume_counts": masks.volume_counts if volume.n_slices > 1 and not preliminary else None,
        "pixel_area_mm2": volume.pixel_area_mm2,
        "voxel_ml": volume.voxel_volume_ml,
        "overlay_caption": image.caption,
        "heat_url": data_url(heat.png),
        "heat_caption": heat.caption,
        "input_url": None if input_picture is None else data_url(input_picture.png),
        "input_caption": None if input_picture is None else input_picture.caption,
        # A projector's pictures leave room for the numbers below them; a laptop's stay within its screen.
        "picture_height": "calc(100vh - 26rem)" if presenter else "calc(100vh - 22rem)",
        "caption_size": "1.3rem" if presenter else "0.9rem",
        "reading_size": "1.6rem" if presenter else "1.1rem",
    }
    _THRESHOLD_VIEW(data=data, key="threshold_view", default={"threshold": None},
                    on_threshold_change=partial(threshold_released, "threshold_view"))
    follow_released_threshold()


@dataclass(frozen=True)
class View:
    """What every page needs to know: the model and the shared settings."""

    model: LoadedModel
    threshold: float
    tta: bool
    presenter: bool


# Streamlit's default top margin (6rem) would push a laptop's overlay below the fold. A metric's value wraps rather
# than end in an ellipsis: on a laptop "1,595 px · 1,291.9 mm²" would lose its unit, or a digit.
BASE_CSS = """<style>
.stMainBlockContainer {padding-top: 3rem;}
h3.case-name {white-space: nowrap; overflow: hidden; text-overflow: ellipsis; padding: 0; line-height: 1.3;
    margin: 0; font-size: 1.5rem; font-weight: 600;}
[data-testid="stMetricValue"], [data-testid="stMetricValue"] * {white-space: normal !important;
    text-overflow: clip !important; overflow: visible !important;}
</style>"""

# Body text grows for the back row; headings and metric values keep their larger size over it (their text sits in
# the same <p> and <span> elements, so each rule names its own elements and everything inside them). Streamlit
# draws a Graphviz diagram's text at its own small size whatever the drawing says; the drawing's boxes are sized
# for it (explain.PRESENTER_DIAGRAM_FONT_SIZE).
PRESENTER_CSS = """<style>
section[data-testid="stSidebar"], [data-testid="stSidebarCollapsedControl"] {display: none;}
.stMainBlockContainer {max-width: 100%; padding-top: 4.5rem; padding-bottom: 2rem;}
header[data-testid="stHeader"] * {font-size: 1.15rem;}
.stMainBlockContainer p, .stMainBlockContainer label, .stMainBlockContainer span,
.stMainBlockContainer [data-baseweb="select"] div {font-size: 1.3rem;}
.stMainBlockContainer h1, .stMainBlockContainer h1 * {font-size: 3.2rem !important;}
.stMainBlockContainer h2, .stMainBlockContainer h2 *, .stMainBlockContainer h3, .stMainBlockContainer h3 * {
    font-size: 2rem !important;}
[data-testid="stMetricValue"], [data-testid="stMetricValue"] * {font-size: 3rem !important;}
[data-testid="stGraphVizChart"] svg text {font-size: 1.4rem !important;}
</style>"""


def case_title(name: str) -> None:
    """The scan's file name as a heading on one line: a long name ends in "…" with the whole name on hover."""
    escaped = html.escape(name, quote=True)
    st.html(f'<h3 class="case-name" title="{escaped}">{escaped}</h3>')


def slice_jumper(chart_key: str, slider_key: str) -> Callable[[], None]:
    """An ``on_select`` callback for a per-slice bar chart (bar i is slice i + 1): move the slider to the clicked bar.

    It reads the bar's index, not its x: grouped bars sit off-centre (slice 9's left bar reports x = 8.8).
    """

    def jump() -> None:
        points = st.session_state[chart_key].selection.points
        if points:
            st.session_state[slider_key] = int(points[0]["point_index"]) + 1

    return jump


def _set_presenter(on: bool) -> None:
    st.session_state["presenter"] = on


def _copy_presenter_threshold() -> None:
    st.session_state["threshold"] = st.session_state["presenter_threshold"]


def _leave_presenter_on_escape() -> None:
    if st.session_state["escape_key"]["pressed"]:
        _set_presenter(False)


# Widgets whose value outlives their page (the scan source, the slices, the display settings), so a student who
# looks at Metrics and comes back finds them as left: Streamlit forgets a widget's state when its page is not shown,
# so the value is kept under a key no widget owns (see remember()). The slices start afresh with each new case.
SLICE_WIDGETS = ("slice", "compare_slice")
KEPT = "kept_widget_values"


def remember(key: str, default: object) -> None:
    """Give the widget ``key`` (drawn right after this call) the value it last had, else ``default``; the widget
    passes ``on_change=keep, args=(key,)`` so a change is kept."""
    kept = st.session_state.setdefault(KEPT, {})
    st.session_state[key] = kept.setdefault(key, default)


def keep(key: str) -> None:
    """Keep the value the widget ``key`` has now (its ``on_change``, or after a callback moved it)."""
    st.session_state.setdefault(KEPT, {})[key] = st.session_state[key]
    write_link()  # a fragment's widget reruns only the fragment: the address bar follows from here


LINK_RESTORED = "link_restored"


def restore_from_link() -> None:
    """Once per session, before anything is drawn: show the view the URL's query parameters name (see links.py);
    what cannot be used is left out, and :func:`sidebar` says so once."""
    state = st.session_state
    if state.get(LINK_RESTORED):
        return
    state[LINK_RESTORED] = True
    settings, ignored = links.parse(st.query_params.to_dict(), sample_index())
    if "sample" in settings:
        set_case(load_sample(settings["sample"]))
    kept = state.setdefault(KEPT, {})
    for name in ("slice", *links.DISPLAY_DEFAULTS):
        if name in settings:
            kept[name] = settings[name]
    for name in ("threshold", "tta", "presenter"):
        if name in settings:
            state[name] = settings[name]
    state["link_note"] = links.ignored_note(ignored)


def write_link() -> None:
    """Keep the URL's query parameters on the view shown, so the address bar is always a link to it."""
    state = st.session_state
    if "threshold" not in state:  # nothing drawn yet (behind the class password)
        return
    case, kept = current_case(), state.get(KEPT, {})
    gallery_names = {entry["image"] for entry in sample_index()}
    sample = None if case is None or state.get("case_uploaded") or case.name not in gallery_names else case.name
    wanted = links.query(sample, kept.get("slice") if sample and case.volume.n_slices > 1 else None,
                         state["threshold"], {name: kept[name] for name in links.DISPLAY_DEFAULTS if name in kept},
                         bool(state.get("tta")), bool(state.get("presenter")))
    wanted.update({name: st.query_params[name] for name in links.CLASS_PARAMS if name in st.query_params})
    if st.query_params.to_dict() != wanted:  # an unchanged URL is not sent again
        st.query_params.from_dict(wanted)

_ESCAPE_KEY = st.components.v2.component("mriseg_escape_key", js="""
export default function (component) {
  const { setTriggerValue } = component;
  const onKey = (event) => { if (event.key === 'Escape') setTriggerValue('pressed', true); };
  document.addEventListener('keydown', onKey);
  return () => document.removeEventListener('keydown', onKey);
}
""")


def sidebar(page_title: str = "") -> None:
    """Model source and version, device (with an override when CUDA exists), the shared settings.

    In presenter mode the sidebar is still drawn (so its widgets keep their values) but hidden; the pages are
    listed along the top (see ``app.py``), and a toolbar with the threshold (the Segment page has its own, under
    the picture), a one-click "next sample" and the way out (also the Esc key) sits on top of the page.

    Args:
        page_title: the page being shown.
    """
    st.html(BASE_CSS)
    with st.sidebar:
        st.markdown("### :material/neurology: mriseg")
        if torch.cuda.is_available():
            st.selectbox("Device", ["auto", "cuda", "cpu"], key="device",
                         help="auto uses the GPU when there is one")
        model = load_model(st.session_state.get("device", "auto"))
        st.session_state.setdefault("threshold", float(model.postprocessing.threshold))
        st.slider("Threshold", 0.05, 0.95, step=0.01, key="threshold",
                  help="A pixel is tumour when its probability is at least this. "
                       f"The model's default, tuned on validation patients, is {model.postprocessing.threshold:.2f}.")
        # On by default for weights whose threshold was tuned with the mirror pass (export --tta).
        st.session_state.setdefault("tta", bool(model.config.get("tta_default", False)))
        st.toggle("Uncertainty (mirror test-time augmentation)", key="tta",
                  help="Also segment the left-right mirrored scan and show where the two answers disagree")
        st.button("Presenter mode", icon=":material/co_present:", on_click=_set_presenter, args=(True,),
                  help="Large text and pictures for a projector, pages along the top, one click to the next "
                       "sample; Esc leaves it")
        links.copy_link_button("copy_link", uploaded=bool(st.session_state.get("case_uploaded")))
        st.caption(f"Running on **{model.segmenter.device_label}**")
        st.caption(f"Model {model.version} · {model.describe_source()}")
        st.caption(DISCLAIMER)
    if st.session_state.get("presenter"):
        presenter_toolbar(threshold_here=page_title != "Segment", class_button=page_title != "Class")
    if note := st.session_state.pop("link_note", None):
        st.info(note, icon=":material/link_off:")
    write_link()  # before the page, which may stop early (a volume being segmented)


def presenter_toolbar(threshold_here: bool = True, class_button: bool = True) -> None:
    """The presenter's controls on one row, all a lesson needs without leaving presenter mode: threshold (where
    the page has none of its own), uncertainty, a gallery sample by name, next sample, an upload, the link, exit.

    The threshold and uncertainty widgets mirror the hidden sidebar's (one key cannot have two widgets).
    """
    st.html(PRESENTER_CSS)
    _ESCAPE_KEY(key="escape_key", on_pressed_change=_leave_presenter_on_escape, height=0)
    state = st.session_state
    with st.container(horizontal=True, vertical_alignment="bottom"):
        if threshold_here:
            state["presenter_threshold"] = state["threshold"]
            st.slider("Threshold", 0.05, 0.95, step=0.01, key="presenter_threshold",
                      on_change=_copy_presenter_threshold, width=300)
        state["presenter_tta"] = state["tta"]
        st.toggle("Uncertainty", key="presenter_tta", on_change=_copy_presenter_tta,
                  help="Also segment the left-right mirrored scan and show where the two answers disagree")
        with st.popover("Upload", icon=":material/upload_file:"):  # first: the picker then shows no stale sample
            upload_box()
        sample_picker()
        st.button("Next sample", icon=":material/skip_next:", on_click=open_next_sample, type="primary")
        links.copy_link_button("presenter_copy_link", uploaded=bool(state.get("case_uploaded")), presenter=True)
        if class_button and st.button("Start a class", icon=":material/groups:",
                                      help="The class outlines the open sample on their own screens"):
            state["class_start_requested"] = True  # the class page starts it on the open sample
            st.switch_page("pages/classroom.py")
        st.button("Exit presenter mode (Esc)", icon=":material/close:", on_click=_set_presenter, args=(False,))


def presenter_step(key: str, steps: list[str]) -> str | None:
    """In presenter mode, the part of a long page to show, one screen each, chosen on a row of buttons under the
    toolbar; None outside presenter mode, where the page shows every part one below the other."""
    if not st.session_state.get("presenter"):
        return None
    return st.segmented_control("Part of the page", steps, key=key, default=steps[0], required=True,
                                label_visibility="collapsed")


def _copy_presenter_tta() -> None:
    st.session_state["tta"] = st.session_state["presenter_tta"]


def sample_picker() -> None:
    """A gallery sample chosen by name opens at once; the picker shows the open sample (None for an upload)."""
    entries = {entry["image"]: entry for entry in sample_index()}
    case = current_case()
    open_name = case.name if case is not None and not st.session_state.get("case_uploaded") else None
    st.session_state["sample_picker"] = open_name if open_name in entries else None
    st.selectbox("Sample", list(entries), key="sample_picker", format_func=lambda name: sample_label(entries[name]),
                 placeholder="Open a sample…", on_change=_open_picked_sample, width=270)


def _open_picked_sample() -> None:
    chosen = st.session_state["sample_picker"]
    if chosen is not None:
        set_case(load_sample(next(entry for entry in sample_index() if entry["image"] == chosen)))


def open_next_sample() -> None:
    """Open the gallery sample after the current one (the first when none of them is open)."""
    entries = sample_index()
    names = [entry["image"] for entry in entries]
    case = current_case()
    position = names.index(case.name) + 1 if case is not None and case.name in names else 0
    set_case(load_sample(entries[position % len(entries)]))


def context() -> View:
    """The loaded model and the settings every page shares."""
    model = load_model(st.session_state.get("device", "auto"))
    return View(model, float(st.session_state.get("threshold", model.postprocessing.threshold)),
                bool(st.session_state.get("tta", False)), bool(st.session_state.get("presenter", False)))


def current_case() -> Case | None:
    return st.session_state.get("case")


def set_case(case: Case | None, uploaded: bool = False) -> None:
    """Show ``case`` from now on (None: nothing); ``uploaded`` says it came from the user's own file."""
    st.session_state["case"] = case
    st.session_state["case_uploaded"] = uploaded and case is not None
    for key in SLICE_WIDGETS:
        st.session_state.pop(key, None)
        st.session_state.get(KEPT, {}).pop(key, None)


def set_truth(case: Case) -> None:
    """Replace the current case by the same scan with ground truth attached (keeps the slice position)."""
    st.session_state["case"] = case


def drop_uploaded_truth() -> None:
    """Forget a mask the user uploaded (a rejected new one must not leave the old one's numbers on screen)."""
    case = current_case()
    if case is not None and (case.truth_source or "").startswith("uploaded"):
        st.session_state["case"] = replace(case, truth=None, truth_source=None)


def require_case() -> Case:
    """The current case, or a pointer to the Segment page and a stop."""
    case = current_case()
    if case is None:
        st.info("No scan yet: open a sample or upload a file on the Segment page.")
        st.page_link("pages/segment.py", label="Go to Segment", icon=":material/neurology:")
        st.stop()
    return case


@st.cache_data(show_spinner=False)
def sample_thumbnails() -> list[tuple[dict, bytes]]:
    """Each gallery sample with a PNG preview (the middle slice of a volume), encoded once per process."""
    from mriseg.app.visualize import display_image, to_png

    previews = []
    for entry in sample_index():
        case = load_sample(entry)
        middle = case.volume.pixels[case.volume.n_slices // 2]
        previews.append((entry, to_png(display_image(middle))))
    return previews


def sample_label(entry: dict) -> str:
    if entry["category"] == "volume":
        return f"whole patient, {entry['slices']} slices"
    if entry["category"] == "tumour-free":
        return "no tumour"
    return f"{entry['category']} tumour, {entry['tumour_pixels']} px"


def sample_button_key(entry: dict) -> str:
    """The widget key of a gallery sample's Open button (browser tests and benchmarks find it by this key)."""
    return f"sample-{entry['image']}"


def gallery(columns: int = 5) -> None:
    """Thumbnails of the shipped samples, each with an Open button that opens it with its ground truth."""
    previews = sample_thumbnails()
    for start in range(0, len(previews), columns):
        for column, (entry, preview) in zip(st.columns(columns), previews[start : start + columns], strict=False):
            with column:
                st.image(preview, caption=sample_label(entry), width="stretch")
                # A callback runs before the page script, so the page already shows the new case.
                st.button("Open", key=sample_button_key(entry), width="stretch",
                          on_click=lambda chosen=entry: set_case(load_sample(chosen)))
    st.caption("Real FLAIR slices of validation patients (never used for training) from the LGG Segmentation "
               "Dataset, TCGA-LGG; masks by the data set's radiologists.")


def process_upload(uploaded, key: str, action: Callable[[UploadedFile], None],
                   on_error: Callable[[], None] | None = None) -> None:
    """Run ``action`` once per newly chosen file; while a rejected file stays chosen, its message stays shown.

    Args:
        uploaded: the file uploader's value.
        key: names the session-state entries that remember the file and its error.
        action: what to do with a new file; raises InputError for a bad one.
        on_error: called after a bad file (e.g. to drop a stale result).
    """
    if uploaded is None:
        return
    if uploaded.file_id != st.session_state.get(f"{key}_id"):
        st.session_state[f"{key}_id"] = uploaded.file_id
        st.session_state[f"{key}_error"] = None
        try:
            action(uploaded)
        except InputError as error:
            st.session_state[f"{key}_error"] = str(error)
            if on_error is not None:
                on_error()
    if st.session_state.get(f"{key}_error"):
        st.error(st.session_state[f"{key}_error"], icon=":material/block:")


def _open_upload(uploaded: UploadedFile) -> None:
    limit_mb = st.get_option("server.maxUploadSize")
    if uploaded.size > limit_mb * 1024 * 1024:
        raise InputError(f"{uploaded.name}: {uploaded.size / 2**20:.0f} MB is over the upload limit of {limit_mb} MB")
    set_case(case_from_bytes(uploaded.getvalue(), uploaded.name), uploaded=True)


def upload_box() -> None:
    """File upload; a bad file clears the old result and shows its problem, and the page stays usable.

    Every file type is let through to the reader: filtered in the browser, a .txt or .pdf would get a red chip
    with no word of what is wrong, and the previous result would stay on screen as if it belonged to it.
    """
    uploaded = st.file_uploader(
        "MRI file", key="upload",
        help="PNG, JPEG, BMP, TIFF (multi-page = a stack), DICOM (.dcm, or a .zip of one series), NIfTI (.nii, "
             ".nii.gz). A 3-channel TIFF in the Kaggle LGG layout gives its FLAIR channel.",
    )
    process_upload(uploaded, "upload", _open_upload, on_error=lambda: set_case(None))
    case = current_case()
    if uploaded is None and case is not None and st.session_state.get("case_uploaded"):
        # The uploader forgets its file when the student visits another page; the scan itself is kept.
        st.caption(f":material/upload_file: Showing your upload **{case.name}**; choose another file to replace it.")
