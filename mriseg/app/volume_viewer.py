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
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import nibabel as nib
import numpy as np
import streamlit as st
from streamlit import runtime

from mriseg.app.threshold_view import STEP_BYTES, THRESHOLD_STEPS, ThresholdMasks, step_of
from mriseg.data.io import Volume

# Percentiles of the brain's intensities mapped to 0 and 255 in the scan sent to the browser.
DISPLAY_PERCENTILES = (0.5, 99.5)
# A NIfTI-1 file's data start after its 348-byte header and 4 bytes that say it has no extensions.
NIFTI_DATA_OFFSET = 352
# Without spacing, a typical FLAIR protocol's ~4:1 slice-to-pixel ratio keeps the other planes readable.
UNKNOWN_SLICE_STRETCH = 4.0
# NiiVue colour maps for the app's overlay colours (mriseg.app.visualize.COLOURS).
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


def display_window(pixels: np.ndarray) -> tuple[float, float]:
    """The intensities shown black and white: the volume's own percentiles (one window for all slices, so a slice
    keeps its brightness in every plane), from every second slice and fourth pixel (no copy of the volume)."""
    sample = pixels[::2, ::4, ::4]
    inside = sample[sample > sample.min()]
    low, high = np.percentile(inside if inside.size else sample, DISPLAY_PERCENTILES)
    return float(low), max(float(high), float(low) + 1e-6)


def display_slices(pixels: np.ndarray) -> Iterator[np.ndarray]:
    """(slices, H, W) intensities as uint8 slices in the :func:`display_window`."""
    low, high = display_window(pixels)
    for plane in pixels:
        yield np.clip((plane - low) * (255.0 / (high - low)), 0, 255).astype(np.uint8)


def slice_codes(masks: ThresholdMasks) -> Iterator[tuple[np.ndarray, int]]:
    """Each slice's (H, W) uint16 code ``first + 256 * end`` of its voxels' threshold steps, with the number of its
    voxels whose steps are no interval (their code is the interval around them).

    Example:
        >>> from mriseg.app.threshold_view import threshold_masks
        >>> from mriseg.postprocessing import PostprocessingConfig
        >>> probabilities = np.zeros((1, 8, 8), np.float32); probabilities[0, 2:6, 2:6] = 0.5
        >>> [(code, inexact)] = slice_codes(threshold_masks(probabilities, PostprocessingConfig()))
        >>> int(code[3, 3]) % 256, int(code[3, 3]) // 256, THRESHOLD_STEPS[45], int(code[0, 0]), inexact
        (0, 46, 0.5, 0, 0)
    """
    steps = len(THRESHOLD_STEPS)
    assert steps <= STEP_BYTES * 8 and steps < 256  # both fit the code's bytes
    for index in range(masks.shape[0]):
        code = np.zeros(masks.shape[1:], np.uint16)
        inexact = 0
        if masks.box is not None and masks.box[0].start <= index < masks.box[0].stop:
            bits = masks.bits[:, index - masks.box[0].start]
            on = np.unpackbits(bits, axis=0)[:steps].astype(bool)  # (steps, rows, columns) of the box
            anywhere = on.any(axis=0)
            first = np.argmax(on, axis=0)
            end = steps - np.argmax(on[::-1], axis=0)
            inexact = int((anywhere & (on.sum(axis=0) != end - first)).sum())
            code[masks.box[1], masks.box[2]] = np.where(anywhere, first + 256 * end, 0)
        yield code, inexact


def nifti_gz(planes: Iterable[np.ndarray], shape: tuple[int, int, int], dtype: type, affine: np.ndarray) -> bytes:
    """Axial slices (as mriseg holds them) written as a gzipped NIfTI file in RAS+ order, one slice at a time: the
    file :func:`mriseg.data.io.slices_to_ras` of the stacked slices would give, without a copy of the volume.

    Example:
        >>> from mriseg.data.io import slices_to_ras
        >>> slices = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
        >>> image = nib.Nifti1Image.from_bytes(gzip.decompress(nifti_gz(slices, slices.shape, np.uint8, np.eye(4))))
        >>> bool((np.asarray(image.dataobj) == slices_to_ras(slices)).all())
        True
    """
    header = nib.Nifti1Header()
    header.set_data_dtype(dtype)
    header.set_data_shape((shape[2], shape[1], shape[0]))  # x, y, z
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    header["vox_offset"] = NIFTI_DATA_OFFSET
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=1) as out:
        block = header.binaryblock
        out.write(block + b"\0" * (NIFTI_DATA_OFFSET - len(block)))  # the header, then no extensions
        for plane in planes:  # x fastest: a slice's rows from the bottom, each from the image's right edge
            out.write(np.ascontiguousarray(plane[::-1, ::-1], dtype=dtype).tobytes())
    return buffer.getvalue()


def viewer_files(volume: Volume, masks: ThresholdMasks) -> ViewerFiles:
    """The gzipped NIfTI files of the scan and the masks' code, on one grid and affine; a slice at a time, so a
    volume at mriseg's size limit costs its session a few slices more, not copies of itself."""
    affine = affine_of(volume)
    inexact = []

    def codes() -> Iterator[np.ndarray]:
        for code, count in slice_codes(masks):
            inexact.append(count)
            yield code

    scan = nifti_gz(display_slices(volume.pixels), volume.shape, np.uint8, affine)
    code = nifti_gz(codes(), volume.shape, np.uint16, affine)
    return ViewerFiles(scan, code, sum(inexact))


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
    (``mriseg/app/viewer``, declared in ``mriseg/pyproject.toml``), which Streamlit finds only once its runtime has
    started."""
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
        presenter: large text, and a canvas that leaves the projector's screen room for the toolbar above it.
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
        "colormap": COLORMAPS.get(colour, "red"),
        "opacity": float(opacity),
        "presenter": presenter,
        # On a projector the toolbar, the parts and the slice slider sit above it, its controls below.
        "height": "calc(100vh - 30rem)" if presenter else "min(70vh, 46rem)",
        "text_size": "1.3rem" if presenter else "0.95rem",
    }
    _viewer_component()(data=data, key="volume_viewer", default={"threshold": None},
                        on_threshold_change=on_threshold_change)
