"""Streamlit glue shared by the pages: the cached model, the bounded prediction cache, the sidebar, the case.

Pages stay thin: they call :func:`context` for the model and threshold, :func:`current_case` for what is being
looked at and :func:`predict` for probabilities, which are computed once per file content, model version,
device and augmentation setting and then reused by every page and every session.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import streamlit as st
import torch
from streamlit.runtime.uploaded_file_manager import UploadedFile

from mriseg.bundle import load_segmenter, read_config
from mriseg.cache import LRUCache
from mriseg.case import Case, case_from_bytes, load_sample, sample_index
from mriseg.errors import InputError
from mriseg.explain import FeatureMaps, feature_maps
from mriseg.inference import Probabilities, Segmenter
from mriseg.io import SUPPORTED_EXTENSIONS
from mriseg.postprocessing import PostprocessingConfig, binarize
from mriseg.weights import WeightsSource, resolve_weights

DISCLAIMER = "For teaching and research only: not a medical device, never for diagnosis."
PREDICTION_CACHE_ENTRIES = 24
PREDICTION_CACHE_BYTES = 1 << 30  # probabilities of ~16 full 256-slice 256x256 volumes
UPLOAD_TYPES = sorted({extension.lstrip(".").split(".")[-1] for extension in SUPPORTED_EXTENSIONS} | {"nii.gz"})


@dataclass(frozen=True)
class LoadedModel:
    """The segmenter with where its weights came from and their config."""

    segmenter: Segmenter
    source: WeightsSource
    config: dict

    @property
    def version(self) -> str:
        return self.config["weights_sha256"][:12]

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


def _setting(name: str) -> str | None:
    """An environment variable, else a Streamlit secret, else None."""
    if os.environ.get(name):
        return os.environ[name]
    try:
        return st.secrets.get(name)
    except FileNotFoundError:  # no secrets.toml anywhere: nothing configured
        return None


@st.cache_resource(show_spinner="Loading the model…")
def load_model(device: str) -> LoadedModel:
    """Resolve and load the weights once per process and device; a broken Hub copy falls back to the bundle."""
    source = resolve_weights(_setting("MRISEG_HF_REPO") or "", _setting("MRISEG_HF_REVISION"))
    try:
        segmenter = load_segmenter(source.folder, device=device)
    except InputError:
        if source.kind == "bundled":
            raise
        source = resolve_weights(repo_id="")
        segmenter = load_segmenter(source.folder, device=device)
    return LoadedModel(segmenter, source, read_config(source.folder))


@st.cache_resource
def prediction_cache() -> LRUCache:
    """One bounded cache for the whole server, so memory stays flat as sessions come and go."""
    return LRUCache(PREDICTION_CACHE_ENTRIES, PREDICTION_CACHE_BYTES, size_of=_prediction_bytes)


def _prediction_bytes(prediction: Prediction) -> int:
    std = prediction.probabilities.std
    return prediction.probabilities.mean.nbytes + (0 if std is None else std.nbytes)


def predict(model: LoadedModel, case: Case, tta: bool = False) -> Prediction:
    """Probabilities for the case, from the cache or computed now with a progress bar."""
    key = (case.digest, model.version, str(model.segmenter.device), tta)
    cache = prediction_cache()
    cached = cache.get(key)
    if cached is not None:
        return cached
    slices = case.volume.n_slices
    label = model.segmenter.device_label
    bar = st.progress(0.0, text=f"Segmenting {slices} slice{'s' * (slices > 1)} on {label}…")
    started = time.perf_counter()
    probabilities = model.segmenter.predict(
        case.volume.pixels, tta=tta,
        progress=lambda done, total: bar.progress(done / total, text=f"Segmenting slice {done} of {total} on {label}…"),
    )
    bar.empty()
    prediction = Prediction(probabilities, time.perf_counter() - started, label)
    cache.put(key, prediction)
    return prediction


@st.cache_resource
def feature_cache() -> LRUCache:
    """Feature maps are large (all channels of every stage): keep only a few, server-wide."""
    return LRUCache(8, 256 << 20, size_of=lambda maps: sum(a.nbytes for a in maps.maps.values()))


def feature_maps_for(model: LoadedModel, case: Case, index: int, member: int = 0) -> FeatureMaps:
    """Feature maps of one slice of the case (inside U-Net ``member`` of an ensemble), cached beside its prediction."""
    key = (case.digest, model.version, str(model.segmenter.device), index, member)
    cache = feature_cache()
    maps = cache.get(key)
    if maps is None:
        maps = feature_maps(model.segmenter, case.volume.pixels, index, member)
        cache.put(key, maps)
    return maps


def current_mask(model: LoadedModel, prediction: Prediction, threshold: float) -> np.ndarray:
    return binarize(prediction.probabilities.mean, model.postprocessing, threshold)


@dataclass(frozen=True)
class View:
    """What every page needs to know: the model and the shared settings."""

    model: LoadedModel
    threshold: float
    tta: bool
    presenter: bool


# Body text grows for the back row; headings and metric values keep their larger size over it (their text sits in
# the same <p> and <span> elements, so each rule names its own elements and everything inside them).
PRESENTER_CSS = """<style>
section[data-testid="stSidebar"], [data-testid="stSidebarCollapsedControl"] {display: none;}
.stMainBlockContainer {max-width: 100%; padding-top: 1rem;}
.stMainBlockContainer p, .stMainBlockContainer label, .stMainBlockContainer span,
.stMainBlockContainer [data-baseweb="select"] div {font-size: 1.3rem;}
.stMainBlockContainer h1, .stMainBlockContainer h1 * {font-size: 3.2rem !important;}
.stMainBlockContainer h2, .stMainBlockContainer h2 *, .stMainBlockContainer h3, .stMainBlockContainer h3 * {
    font-size: 2rem !important;}
[data-testid="stMetricValue"], [data-testid="stMetricValue"] * {font-size: 3rem !important;}
</style>"""


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


def sidebar() -> None:
    """Model source and version, device (with an override when CUDA exists), the shared settings.

    In presenter mode the sidebar is still drawn (so its widgets keep their values) but hidden, and a toolbar
    with larger controls and a one-click "next sample" sits on top of the page instead.
    """
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
                  help="Large text and images for a projector, sidebar hidden, one click to the next sample")
        st.caption(f"Running on **{model.segmenter.device_label}**")
        st.caption(f"Model {model.version} · {model.describe_source()}")
        st.caption(DISCLAIMER)
    if st.session_state.get("presenter"):
        presenter_toolbar()


def presenter_toolbar() -> None:
    st.html(PRESENTER_CSS)
    columns = st.columns([3, 1, 1])
    st.session_state["presenter_threshold"] = st.session_state["threshold"]
    columns[0].slider("Threshold", 0.05, 0.95, step=0.01, key="presenter_threshold",
                      on_change=_copy_presenter_threshold)
    columns[1].button("Next sample", icon=":material/skip_next:", on_click=open_next_sample, type="primary",
                      width="stretch")
    columns[2].button("Exit presenter mode", on_click=_set_presenter, args=(False,), width="stretch")


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


def set_case(case: Case | None) -> None:
    st.session_state["case"] = case
    st.session_state.pop("slice", None)


def set_truth(case: Case) -> None:
    """Replace the current case by the same scan with ground truth attached (keeps the slice position)."""
    st.session_state["case"] = case


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
    from mriseg.visualize import display_image, to_png

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
    """Thumbnails of the shipped samples; a click opens one with its ground truth."""
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
    set_case(case_from_bytes(uploaded.getvalue(), uploaded.name))


def upload_box() -> None:
    """File upload; a bad file shows its problem and leaves the page usable for the next one."""
    uploaded = st.file_uploader(
        "MRI file", type=UPLOAD_TYPES, key="upload",
        help="PNG, JPEG, BMP, TIFF (multi-page = a stack), DICOM (.dcm, or a .zip of one series), NIfTI (.nii, "
             ".nii.gz). A 3-channel TIFF in the Kaggle LGG layout gives its FLAIR channel.",
    )
    process_upload(uploaded, "upload", _open_upload, on_error=lambda: set_case(None))
