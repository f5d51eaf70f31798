"""A corpus of broken, hostile and unsupported files: each gets a clear message naming the problem, never a
traceback, through the reader, the CLI and the app alike."""

from __future__ import annotations

import gzip
import io
import zipfile

import cv2
import nibabel as nib
import numpy as np
import pytest
from helpers import head_phantom, make_dicom
from PIL import Image

from mriseg.app.case import case_from_bytes
from mriseg.cli import main
from mriseg.errors import InputError


def _png(pixels: np.ndarray) -> bytes:
    return cv2.imencode(".png", pixels)[1].tobytes()


def _nifti(pixels: np.ndarray, affine: np.ndarray | None = None) -> bytes:
    return nib.Nifti1Image(pixels, np.eye(4) if affine is None else affine).to_bytes()


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _tiff_pages(count: int, side: int = 32) -> bytes:
    page = Image.fromarray(np.full((side, side), 50, np.uint8))
    buffer = io.BytesIO()
    page.save(buffer, format="TIFF", save_all=True, append_images=[page] * (count - 1))
    return buffer.getvalue()


def _rgb_nifti() -> bytes:
    rgb = np.zeros((40, 40, 3), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    return nib.Nifti1Image(rgb, np.eye(4)).to_bytes()


def _oblique_nifti(degrees: float) -> bytes:
    angle = np.radians(degrees)
    affine = np.eye(4)
    affine[:3, :3] = [[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]]
    return _nifti(np.repeat(head_phantom(64)[..., None], 4, axis=2), affine)


def _dicom_without_pixels() -> bytes:
    from pydicom import dcmread

    dataset = dcmread(io.BytesIO(make_dicom(head_phantom(64))))
    del dataset.PixelData
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


PHANTOM = head_phantom(64)
CORPUS: list[tuple[str, bytes | None, str]] = [
    ("empty.png", b"", "empty"),
    ("truncated.png", _png(PHANTOM)[:60], "truncated.png"),
    ("notes.png", b"this is a text file, not a scan" * 10, "notes.png"),
    ("notes.dcm", b"this is a text file, not a scan" * 10, "notes.dcm"),
    ("notes.nii", b"this is a text file, not a scan" * 20, "notes.nii"),
    ("notes.nii.gz", gzip.compress(b"this is a text file, not a scan" * 20), "notes.nii.gz"),
    ("cut.nii.gz", gzip.compress(_nifti(np.ones((40, 40, 3), np.float32)))[:200], "cut.nii.gz"),
    ("fmri.nii", _nifti(np.random.default_rng(0).random((40, 40, 4, 2)).astype(np.float32)), "4 dimensions"),
    ("colour.nii", _rgb_nifti(), "RGB"),
    ("complex.nii", _nifti(np.ones((40, 40, 3), np.complex64)), "complex"),
    ("flat.png", _png(np.full((64, 64), 9, np.uint8)), "same value"),
    ("zeros.nii", _nifti(np.zeros((40, 40, 3), np.float32)), "same value"),
    ("nan.nii", _nifti(np.full((40, 40, 3), np.nan, np.float32)), "nan.nii"),
    ("tiny.png", _png(PHANTOM[:8, :8]), "tiny.png"),
    ("sliver.png", _png(np.tile(PHANTOM[:10], (1, 3))), "sliver.png"),
    ("pages.tif", _tiff_pages(3000), "pages.tif"),
    ("nothing.zip", _zip({"readme.txt": b"no scans in here"}), "nothing.zip"),
    ("empty.zip", _zip({}), "empty.zip"),
    ("escape.zip", _zip({"../../etc/passwd.dcm": make_dicom(PHANTOM)}), "escape.zip"),
    ("broken.zip", b"PK\x03\x04" + b"\x00" * 40, "broken.zip"),
    ("nopixels.dcm", _dicom_without_pixels(), "nopixels.dcm"),
    ("tilted.nii", _oblique_nifti(40), "tilted"),
    ("one-sagittal-slice.nii", _nifti(PHANTOM[None]), "sagittal"),
    ("program.exe", b"MZ" + b"\x00" * 100, "program.exe"),
    ("notes.txt", b"hello", "notes.txt"),
    ("report.pdf", b"%PDF-1.4\n" + b"\x00" * 100, "report.pdf"),
    ("photo.jpg", b"\xff\xd8\xff\xe0" + b"\x00" * 30, "photo.jpg"),
    ("bitmap.bmp", b"BM" + b"\x00" * 30, "bitmap.bmp"),
    ("scan.tiff", b"II*\x00" + b"\x00" * 30, "scan.tiff"),
    ("header-only.nii", _nifti(np.ones((40, 40, 3), np.float32))[:352], "header-only.nii"),
]


@pytest.mark.parametrize(("name", "data", "expected"), CORPUS, ids=[item[0] for item in CORPUS])
def test_reader_refuses_with_a_message(name, data, expected):
    with pytest.raises(InputError) as raised:
        case_from_bytes(data, name)
    message = str(raised.value)
    assert expected.lower() in message.lower()
    assert "Traceback" not in message and len(message) < 600


@pytest.mark.slow
def test_cli_reports_every_bad_file_and_goes_on(tmp_path, capsys):
    paths = []
    for name, data, _ in CORPUS:
        path = tmp_path / "in" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        paths.append(str(path))
    good = tmp_path / "in" / "good.png"
    good.write_bytes(_png(PHANTOM))
    code = main(["predict", *paths, str(good), "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 1, captured.err[-2000:]
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == len(CORPUS)
    assert "Traceback" not in captured.err
    assert (tmp_path / "out" / "good_mask.png").exists()
