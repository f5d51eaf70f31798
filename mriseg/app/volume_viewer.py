"""A real volume viewer: NiiVue in the browser, with the scan in three planes linked by a crosshair, a 3D rendering,
and the tumour at a threshold that moves without a server round trip.

The browser gets two gzipped NIfTI files once per case, served as media files (not in the page's data, which every
rerun sends again): the scan as 8-bit intensities, and a code volume of the masks of every threshold step. A voxel's
steps are an interval (it is tumour from the step where its probability passes the threshold's upper steps, down to
the step where a 3D filter drops it), stored as ``first + 256 * end``: tumour at step ``s`` when
``first <= s < end``. The rare voxel whose steps are no interval (a component dropped at a middle step by the 3D
filter and kept at others) is counted, and the viewer says so.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass

import nibabel as nib
import numpy as np
import streamlit as st
from streamlit import runtime

from mriseg.app.threshold_view import STEP_BYTES, THRESHOLD_STEPS, ThresholdMasks, step_of
from mriseg.app.visualize import COLOURS
from mriseg.data.io import Volume, slices_to_ras

# Percentiles of the brain's intensities mapped to 0 and 255 in the scan sent to the browser.
DISPLAY_PERCENTILES = (0.5, 99.5)
# Without spacing, a typical FLAIR protocol's ~4:1 slice-to-pixel ratio keeps the other planes readable.
UNKNOWN_SLICE_STRETCH = 4.0
# NiiVue colour maps for the app's overlay colours.
COLORMAPS = {"red": "red", "yellow": "warm", "green": "green", "cyan": "blue", "magenta": "violet"}


@dataclass(frozen=True)
class ViewerFiles:
    """What the browser fetches for one case: the scan and the masks' code volume (gzipped NIfTI), and how many
    voxels the code cannot give exactly."""

    scan: bytes
    code: bytes
    inexact_voxels: int


def affine_of(volume: Volume) -> np.ndarray:
    """The RAS+ voxel-to-world affine of the canonical array (:func:`mriseg.data.io.slices_to_ras` order); a file
    without spacing gets square pixels and slices :data:`UNKNOWN_SLICE_STRETCH` pixels apart, for display only."""
    if volume.affine is not None:
        return volume.affine
    row, column, thickness = volume.spacing or (1.0, 1.0, UNKNOWN_SLICE_STRETCH)
    return np.diag([column, row, thickness, 1.0])


def display_volume(pixels: np.ndarray) -> np.ndarray:
    """(slices, H, W) intensities as uint8, the volume's own percentiles as black and white (one window for all
    slices, so a slice keeps its brightness in every plane)."""
    low, high = np.percentile(pixels[pixels > pixels.min()] if (pixels > pixels.min()).any() else pixels,
                              DISPLAY_PERCENTILES)
    scaled = (pixels - low) * (255.0 / max(float(high - low), 1e-6))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def step_intervals(masks: ThresholdMasks) -> tuple[np.ndarray, int]:
    """The (slices, H, W) uint16 code ``first + 256 * end`` of every voxel's threshold steps, and the number of
    voxels whose steps are no interval (their code is the interval around them).

    Example:
        >>> from mriseg.app.threshold_view import threshold_masks
        >>> from mriseg.postprocessing import PostprocessingConfig
        >>> probabilities = np.zeros((1, 8, 8), np.float32); probabilities[0, 2:6, 2:6] = 0.5
        >>> code, inexact = step_intervals(threshold_masks(probabilities, PostprocessingConfig()))
        >>> int(code[0, 3, 3]) % 256, int(code[0, 3, 3]) // 256, THRESHOLD_STEPS[45], int(code[0, 0, 0]), inexact
        (0, 46, 0.5, 0, 0)
    """
    code = np.zeros(masks.shape, np.uint16)
    if masks.box is None:
        return code, 0
    steps = len(THRESHOLD_STEPS)
    inexact = 0
    for offset in range(masks.bits.shape[1]):  # slice by slice: every step's mask of a slice at once is small
        on = np.unpackbits(masks.bits[:, offset], axis=0)[:steps].astype(bool)  # (steps, rows, columns)
        anywhere = on.any(axis=0)
        first = np.argmax(on, axis=0)
        end = steps - np.argmax(on[::-1], axis=0)
        inexact += int((anywhere & (on.sum(axis=0) != end - first)).sum())
        code[masks.box[0].start + offset][masks.box[1], masks.box[2]] = np.where(anywhere, first + 256 * end, 0)
    assert steps <= STEP_BYTES * 8 and steps < 256  # both fit the code's bytes
    return code, inexact


def viewer_files(volume: Volume, masks: ThresholdMasks) -> ViewerFiles:
    """The gzipped NIfTI files of the scan and the masks' code, on one grid and affine."""
    affine = affine_of(volume)
    code, inexact = step_intervals(masks)

    def nifti(slices: np.ndarray) -> bytes:
        return gzip.compress(nib.Nifti1Image(slices_to_ras(slices), affine).to_bytes(), compresslevel=1)

    return ViewerFiles(nifti(display_volume(volume.pixels)), nifti(code), inexact)


def media_url(data: bytes, name: str) -> str:
    """A URL the browser can fetch ``data`` from, held for this session while the page shows it (Streamlit's
    media file manager, as st.image uses)."""
    return runtime.get_instance().media_file_mgr.add(data, "application/gzip", f"mriseg.volume_viewer.{name}")


VIEWER_HTML = """
<div class="viewer">
  <div class="stage"><canvas></canvas></div>
  <div class="controls">
    <label>Threshold <output class="value"></output><input class="threshold" type="range" min="0" step="1"></label>
    <span class="reading">Loading the 3D viewer…</span>
    <span class="layouts"><button data-layout="planes" class="on">3 planes + 3D</button>
      <button data-layout="render">3D</button></span>
  </div>
  <div class="hint">Click a plane to move the crosshair, scroll to step through its slices, right-drag for
    brightness and contrast; in 3D, drag to turn the head.</div>
</div>"""
VIEWER_CSS = """
.viewer {font-family: var(--st-font, sans-serif); color: var(--st-text-color, #fafafa); font-size: var(--text-size);}
.stage {height: var(--viewer-height); width: 100%;}
canvas {display: block; width: 100%; height: 100%; border-radius: 0.25rem; background: #000;}
.controls {display: flex; align-items: center; gap: 1rem; margin-top: 0.5rem; flex-wrap: wrap;}
label {display: flex; align-items: center; gap: 0.6rem; flex: 1 1 18rem; white-space: nowrap;}
input.threshold {flex: 1 1 auto; accent-color: var(--st-primary-color, #f0b429); min-width: 8rem;}
.reading {font-weight: 600;}
.hint {opacity: 0.75; margin-top: 0.3rem; font-size: 0.9em;}
button {font: inherit; color: inherit; background: transparent; cursor: pointer; border-radius: 0.5rem;
        border: 1px solid rgba(128, 128, 128, 0.45); padding: 0.2rem 0.7rem;}
button.on {border-color: #ff4b4b; color: #ff4b4b;}
"""


def _viewer_component():
    """The component, declared where it is used: its script is a file of the installed package
    (``mriseg/app/viewer``, declared in pyproject.toml), which Streamlit finds only once its runtime has started."""
    return st.components.v2.component("mriseg.volume_viewer", html=VIEWER_HTML, css=VIEWER_CSS,
                                      js="volume_viewer.js")


def volume_viewer(volume: Volume, files: ViewerFiles, threshold: float, crosshair: tuple[int, int, int], *,
                  colour: str = "red", opacity: float = 0.45, presenter: bool = False,
                  on_threshold_change=None) -> None:
    """The viewer for ``volume``, the overlay at ``threshold``.

    Args:
        volume: the scan.
        files: :func:`viewer_files` of it and its masks.
        threshold: the shared threshold.
        crosshair: where the crosshair starts: (slice, row, column) of the axial slices.
        colour, opacity: the overlay's, as on the page.
        presenter: large text and a taller canvas for a projector.
        on_threshold_change: called when the viewer's threshold slider is released (its value in the component's
            state, key ``volume_viewer``).
    """
    _, rows, columns = volume.shape
    index, row, column = crosshair
    data = {
        "scan_url": media_url(files.scan, "scan"),
        "overlay_url": media_url(files.code, "code"),
        "steps": list(THRESHOLD_STEPS),
        "step": step_of(threshold),
        "crosshair": [columns - 1 - column, rows - 1 - row, index],  # the RAS voxel (see slices_to_ras)
        "voxel_ml": volume.voxel_volume_ml,
        "colormap": COLORMAPS.get(colour, "red") if colour in COLOURS else "red",
        "opacity": float(opacity),
        "presenter": presenter,
        # On a projector the toolbar, the parts and the slice slider sit above it, its controls below.
        "height": "calc(100vh - 30rem)" if presenter else "min(70vh, 46rem)",
        "text_size": "1.3rem" if presenter else "0.95rem",
    }
    _viewer_component()(data=data, key="volume_viewer", default={"threshold": None},
                   on_threshold_change=on_threshold_change)
