"""Warnings for files unlike brain FLAIR: none on real FLAIR (skull on, skull-stripped, z-scored), one on a colour
photograph, a CT scan, a limb and a burned-in letter; through the CLI and the app too.

Every input is a real file made here and read back with :func:`mriseg.data.io.read_volume`, as the app and the CLI do.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pydicom
import pytest
from helpers import REPO_ROOT, SAMPLES, make_dicom
from scipy import ndimage
from skimage import data as skimage_data

from mriseg.data.input_check import check_input
from mriseg.data.io import read_volume

DATA = REPO_ROOT.parent / "shared" / "data" / "lgg-flair"
SAMPLE_SLICE = "TCGA_HT_8563_19981209_11.png"  # a gallery slice through the ventricles, with a large tumour


def warnings_for(data: bytes, name: str) -> list[str]:
    return check_input(read_volume(data, name))


def png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", np.asarray(image))[1].tobytes()


def nifti(image: np.ndarray) -> bytes:
    """A float32 NIfTI of a (H, W) slice or an (S, H, W) stack."""
    array = np.asarray(image, np.float32)
    array = array[:, :, None] if array.ndim == 2 else np.transpose(array, (2, 1, 0))
    return nib.Nifti1Image(array, np.eye(4)).to_bytes()


def sample_slice(name: str = SAMPLE_SLICE) -> np.ndarray:
    return cv2.imread(str(SAMPLES / name), cv2.IMREAD_GRAYSCALE)


def brain_mask(image: np.ndarray) -> np.ndarray:
    """A crude brain: the head (above 15 % of its bright end, holes filled) eroded by 12 px, past scalp and skull."""
    head = ndimage.binary_fill_holes(image > 0.15 * np.percentile(image, 99.5))
    return ndimage.binary_erosion(head, iterations=12)


def z_scored(image: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """The BraTS convention: brain z-scored (values on both sides of 0), background exactly 0."""
    values = image[brain].astype(np.float64)
    return np.where(brain, (image - values.mean()) / values.std(), 0).astype(np.float32)


def patient_slices(folder: Path) -> list[Path]:
    return sorted((path for path in folder.glob("*.png") if not path.name.endswith("_mask.png")),
                  key=lambda path: int(path.stem.rsplit("_", 1)[1]))


def data_patients() -> list[Path]:
    if not DATA.is_dir():
        pytest.skip(f"the LGG FLAIR data set is not at {DATA}")
    patients = sorted(folder for folder in DATA.iterdir() if folder.is_dir())
    assert len(patients) == 90
    return patients


def real_flair_files(variant: str) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every third slice of all 90 patients, top and bottom of the head included, as ``variant``."""
    for folder in data_patients():
        for path in patient_slices(folder)[::3]:
            image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            if image.max() == image.min():
                continue  # an empty slice is refused by the reader, not warned about
            if variant == "skull on":
                yield path.name, path.read_bytes()
                continue
            if variant == "windowed":  # a display window saturating the brightest 1 % (lesion, fat) in flat patches
                top = np.percentile(image, 99)
                if top > 0:  # else nothing but the 1 % is left to show
                    yield path.name, png(np.round(np.clip(image, 0, top) * 255 / top).astype(np.uint8))
                continue
            brain = brain_mask(image)
            if brain.sum() < 50 or image[brain].std() == 0:
                continue  # no brain left to keep on this slice
            if variant == "skull-stripped":
                yield path.name, png(np.where(brain, image, 0).astype(np.uint8))
            else:
                yield path.with_suffix(".nii").name, nifti(z_scored(image.astype(np.float32), brain))


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["skull on", "windowed", "skull-stripped", "z-scored"])
def test_real_flair_slices_get_no_warning(variant):
    """All 90 patients, every third slice (1,090 or so), as PNG or, z-scored, as float NIfTI: no warning at all."""
    checked, warned = 0, []
    for name, data in real_flair_files(variant):
        checked += 1
        if found := warnings_for(data, name):
            warned.append(f"{name}: {found}")
    assert checked > 1000
    assert not warned, f"{len(warned)} of {checked} real FLAIR slices ({variant}) warned:\n" + "\n".join(warned[:10])


@pytest.mark.slow
def test_real_flair_volumes_and_gallery_get_no_warning(sample_index):
    """Whole volumes: the gallery (PNG slices, the Kaggle 3-channel TIFF stack) and every tenth patient as a
    skull-stripped, z-scored NIfTI volume."""
    for entry in sample_index:
        assert warnings_for((SAMPLES / entry["image"]).read_bytes(), entry["image"]) == [], entry["image"]
    for folder in data_patients()[::10]:
        stack = np.stack([cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) for path in patient_slices(folder)])
        brain = np.stack([brain_mask(image) for image in stack])
        assert warnings_for(nifti(z_scored(stack.astype(np.float32), brain)), f"{folder.name}.nii") == [], folder


@pytest.mark.parametrize(("photo", "extension"), [("astronaut", ".png"), ("coffee", ".jpg")])
def test_colour_photograph_warns(photo, extension):
    rgb = getattr(skimage_data, photo)()
    data = cv2.imencode(extension, np.ascontiguousarray(rgb[..., ::-1]))[1].tobytes()
    found = warnings_for(data, photo + extension)
    assert found and found[0].startswith("This looks like a colour photograph, not an MRI slice")
    assert "treat the outline as meaningless" in found[0]
    # the colour, not the picture, makes this warning
    grey = cv2.imencode(extension, rgb.mean(axis=-1).astype(np.uint8))[1].tobytes()
    assert not any("colour" in warning for warning in warnings_for(grey, photo + extension))


def test_grey_scan_saved_in_colour_channels_is_not_colour():
    """A FLAIR slice exported as an RGB JPEG with a viewer's slight tint (channels 12 levels apart) is still grey."""
    grey = sample_slice().astype(np.int16)
    tinted = np.dstack([grey - 6, grey, grey + 6]).clip(0, 255).astype(np.uint8)
    data = cv2.imencode(".jpg", tinted)[1].tobytes()
    assert read_volume(data, "export.jpg").source["channels"] == 3
    assert warnings_for(data, "export.jpg") == []


def ct_phantom(size: int = 256) -> np.ndarray:
    """A CT-like head slice in Hounsfield units: air -1000, skull +1000, brain 20-50, with scanner noise."""
    phantom = cv2.resize(skimage_data.shepp_logan_phantom(), (size, size))
    hounsfield = np.where(phantom > 0.9, 1000, np.where(phantom > 0.05, 20 + 100 * phantom, -1000))
    return (hounsfield + np.random.default_rng(0).normal(0, 10, phantom.shape)).astype(np.float32)


def test_ct_in_hounsfield_units_warns():
    found = warnings_for(nifti(ct_phantom()), "head_ct.nii")
    assert len(found) == 1 and found[0].startswith("This looks like a CT scan: ")
    # the same picture scaled to values around -1 to 1, as a z-scored MRI has, is not taken for CT
    assert warnings_for(nifti(ct_phantom() / 1000), "scaled.nii") == []


def dicom_with_modality(modality: str) -> bytes:
    dataset = pydicom.dcmread(io.BytesIO(make_dicom(sample_slice().astype(np.uint16) * 4)))
    dataset.Modality = modality
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    return buffer.getvalue()


def test_dicom_of_another_modality_warns():
    """The same FLAIR pixels: a CT header warns, an MR header does not."""
    found = warnings_for(dicom_with_modality("CT"), "slice.dcm")
    assert found == ["The DICOM header says this is a CT scan (Modality CT), not MRI. The model only knows brain "
                     "FLAIR MRI, so treat the outline as meaningless."]
    assert warnings_for(dicom_with_modality("MR"), "slice.dcm") == []


def limb(crossing: bool) -> np.ndarray:
    """Real MR texture (the inside of a FLAIR brain) in the shape of a limb on a dark background: a band running
    from the top of the image to the bottom, as a sagittal knee does, or a 230x60 px oval inside the frame."""
    tissue = cv2.resize(sample_slice()[78:178, 78:178], (256, 256), interpolation=cv2.INTER_LINEAR)
    yy, xx = np.mgrid[:256, :256]
    shape = np.abs(xx - 128) < 55 if crossing else ((yy - 128) / 115) ** 2 + ((xx - 128) / 30) ** 2 < 1
    background = np.random.default_rng(0).integers(0, 6, (256, 256))
    return np.where(shape, tissue, background).astype(np.uint8)


@pytest.mark.parametrize("crossing", [True, False])
def test_limb_shaped_mr_warns(crossing):
    found = warnings_for(png(limb(crossing)), "knee.png")
    assert len(found) == 1 and found[0].startswith("This does not look like an axial head slice: the object in it is")
    assert ("runs off two opposite edges" in found[0]) == crossing


@pytest.mark.parametrize(("where", "scale", "thickness"), [((70, 190), 4, 8), ((8, 60), 2, 6)])
def test_burned_in_letter_warns(where, scale, thickness):
    """A large letter drawn in white, over the brain or on the background beside the head."""
    image = sample_slice()
    assert warnings_for(png(image), SAMPLE_SLICE) == []
    cv2.putText(image, "R", where, cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thickness)
    found = warnings_for(png(image), "annotated.png")
    assert len(found) == 1 and found[0].startswith("Part of this image is a bright stroke of one exact value")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), MRISEG_HF_REPO="")
    return subprocess.run([sys.executable, "-m", "mriseg", *args], capture_output=True, text=True, env=env,
                          cwd=REPO_ROOT, timeout=600)


@pytest.mark.slow
def test_cli_predict_warns_on_a_colour_photograph_only(tmp_path):
    photo = tmp_path / "astronaut.png"
    photo.write_bytes(cv2.imencode(".png", skimage_data.astronaut()[..., ::-1])[1].tobytes())
    result = run_cli("predict", str(photo), str(SAMPLES / SAMPLE_SLICE), "--out", str(tmp_path / "out"),
                     "--device", "cpu")
    assert result.returncode == 0, result.stderr  # segmented all the same
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: astronaut.png: {warnings_for(photo.read_bytes(), photo.name)[0]}"]
    assert (tmp_path / "out" / "astronaut_mask.png").exists()
    assert any(line.startswith(SAMPLE_SLICE) for line in result.stdout.splitlines())


@pytest.mark.slow
def test_app_warns_above_the_result_for_a_colour_photograph(slice_samples):
    from test_app import open_sample, start, upload

    at = start()
    at.radio(key="source").set_value("Upload a file").run()
    upload(at, "upload", "astronaut.png", cv2.imencode(".png", skimage_data.astronaut()[..., ::-1])[1].tobytes())
    assert len(at.warning) == 1 and at.warning[0].value.startswith("This looks like a colour photograph")
    nodes = list(at.main)
    first_warning = next(i for i, node in enumerate(nodes) if node.type == "warning")
    result = next(i for i, node in enumerate(nodes) if getattr(node, "label", None) == "Tumour area, this slice")
    assert first_warning < result

    at = open_sample(start(), slice_samples[0]["image"])
    assert not at.warning
    assert any(metric.label == "Tumour area, this slice" for metric in at.metric)
