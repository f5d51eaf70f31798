"""Hostile files, each made here: every one is refused before it is decoded, with one line naming the file and the
limit, and the CLI's memory stays within one session's budget (mriseg.data.io.SESSION_MEMORY_BUDGET) above what a
valid file costs it."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import tracemalloc
import warnings
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from helpers import (
    REPO_ROOT,
    declare_zip_size,
    dicom_declaring,
    head_phantom,
    make_dicom,
    png_with_chunk,
    tiff_pages,
    write_dicom_with_excess,
    write_nifti_gz,
    write_zip_of_zeros,
    zip_with_bad_crc,
)
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import RLELossless

from mriseg.data import dicom
from mriseg.data.io import MAX_UNCOMPRESSED_BYTES, MAX_VOXELS, SESSION_MEMORY_BUDGET, read_volume
from mriseg.errors import InputError


def refusal(data: bytes, name: str) -> str:
    """The message reading ``data`` is refused with, checked to be one line naming the file, with no warning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(InputError) as raised:
            read_volume(data, name)
    message = str(raised.value)
    assert message.startswith(f"{name}: ") and "\n" not in message and "unexpected" not in message
    assert not caught, [str(warning.message) for warning in caught]
    return message


def _rle_dicom(frames: np.ndarray, keep: int) -> bytes:
    """A 16-bit multi-frame DICOM compressed with RLE (one fragment a frame), holding only the first ``keep``."""
    dataset = pydicom.dcmread(io.BytesIO(make_dicom(frames, frames=True)))
    dataset.compress(RLELossless)
    encoded = list(generate_frames(dataset.PixelData, number_of_frames=len(frames)))
    dataset.PixelData = encapsulate(encoded[:keep])
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class TestDicom:
    def test_short_pixel_data_is_refused_before_decoding(self):
        message = refusal(dicom_declaring(256, 256, 100, 100), "short.dcm")
        assert "hold 100 bytes" in message and "100 frames of 256x256" in message and "truncated" in message

    def test_wide_image_from_a_few_bytes_is_refused(self):
        data = dicom_declaring(2048, 2048, 1, 100)
        assert len(data) < 1000
        assert "need 8,388,608: the file is truncated" in refusal(data, "wide.dcm")

    def test_999_frames_in_948_bytes_are_refused_by_their_declared_shape(self):
        data = dicom_declaring(256, 256, 999, 100)
        assert len(data) < 1000
        assert f"999x256x256 voxels is too large (limit 2048 px a side and {MAX_VOXELS:,} voxels" in refusal(
            data, "frames.dcm")

    def test_excess_pixel_data_are_refused(self):
        message = refusal(dicom_declaring(64, 64, 1, 64 * 64 * 2 + (10 << 20)), "excess.dcm")
        assert "far more than the 1 frame of 64x64 the header declares (8,192 bytes)" in message

    def test_a_little_padding_after_the_pixels_is_read(self):
        pixels = head_phantom(64) * 10
        dataset = pydicom.dcmread(io.BytesIO(make_dicom(pixels)))
        dataset.PixelData += bytes(16)
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        np.testing.assert_array_equal(read_volume(buffer.getvalue(), "padded.dcm").pixels,
                                      read_volume(make_dicom(pixels), "exact.dcm").pixels)

    def test_compressed_frames_are_read_and_missing_ones_refused(self):
        frames = np.stack([head_phantom(64, seed=seed) * 10 for seed in range(3)])
        read = read_volume(_rle_dicom(frames, keep=3), "rle.dcm")
        assert read.shape == (3, 64, 64)
        message = refusal(_rle_dicom(frames, keep=2), "cut-rle.dcm")
        assert "2 fragment(s) for 3 frames: the file is truncated" in message

    def test_a_truncated_file_in_a_zip_is_named(self):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("0001.dcm", make_dicom(head_phantom(64) * 10))
            archive.writestr("0002.dcm", dicom_declaring(64, 64, 1, 100))
        assert "series.zip: 0002.dcm: the pixel data hold 100 bytes" in refusal(buffer.getvalue(), "series.zip")

    def test_missing_image_size_is_refused(self):
        dataset = pydicom.dcmread(io.BytesIO(make_dicom(head_phantom(64))))
        del dataset.Rows
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        assert "gives no image size" in refusal(buffer.getvalue(), "norows.dcm")


def _deflated_dicom(pixels: np.ndarray, extra: int = 0) -> bytes:
    """An MR DICOM in the deflated transfer syntax, with ``extra`` zero bytes in a private element."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    dataset = pydicom.dcmread(io.BytesIO(make_dicom(pixels)))
    dataset.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    if extra:
        dataset.add_new(0x00091010, "OB", bytes(extra))
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class TestDeflatedDicom:
    def test_a_deflated_file_is_read(self):
        pixels = head_phantom(64) * 10
        np.testing.assert_array_equal(read_volume(_deflated_dicom(pixels), "deflated.dcm").pixels,
                                      read_volume(make_dicom(pixels), "plain.dcm").pixels)

    @pytest.mark.slow
    def test_a_deflate_bomb_is_refused_before_pydicom_inflates_it(self):
        data = _deflated_dicom(head_phantom(64) * 10, extra=MAX_UNCOMPRESSED_BYTES)
        assert len(data) < 1 << 20
        tracemalloc.start()
        message = refusal(data, "bomb.dcm")
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert f"unpack to more than {MAX_UNCOMPRESSED_BYTES >> 20} MiB" in message and peak < 16 << 20


class TestTemporaryFolders:
    def test_reading_leaves_nothing_in_the_private_folder(self):
        root = dicom.temporary_root()
        read_volume(make_dicom(head_phantom(64) * 10), "scan.dcm")
        assert root.stat().st_mode & 0o777 == 0o700 and root.stat().st_uid == os.getuid()
        assert not list(root.glob(f"{dicom.FOLDER_PREFIX}{os.getpid()}-*"))

    def test_sweep_removes_the_folders_of_dead_processes_only(self, tmp_path):
        finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                                  text=True, check=True)
        dead = tmp_path / f"{dicom.FOLDER_PREFIX}{finished.stdout.strip()}-abc"
        live = tmp_path / f"{dicom.FOLDER_PREFIX}{os.getpid()}-def"
        for folder in (dead, live):
            folder.mkdir()
            (folder / "00000.dcm").write_bytes(b"patient data")
        dicom.sweep_stale_temporary_folders(tmp_path)
        assert not dead.exists() and (live / "00000.dcm").exists()


class TestImages:
    def test_a_huge_page_after_a_small_one_is_refused_before_decoding(self):
        tracemalloc.start()
        message = refusal(tiff_pages([64, 13000]), "stack.tif")
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert "2x13000x13000 voxels is too large" in message
        assert peak < 20 << 20  # decoded, the page alone would take 161 MiB

    def test_pages_within_the_side_limit_are_refused_by_their_total(self):
        assert f"9x2048x2048 voxels is too large (limit 2048 px a side and {MAX_VOXELS:,}" in refusal(
            tiff_pages([2048] * 9), "nine.tif")

    def test_pages_of_different_sizes_are_refused_before_decoding(self):
        assert "differ in size (64x64, then 96x96 on page 2)" in refusal(tiff_pages([64, 96]), "mixed.tif")

    @pytest.mark.parametrize("chunk", [b"iCCP", b"zTXt"])
    def test_metadata_that_inflates_too_far_is_refused(self, chunk):
        message = refusal(png_with_chunk(chunk, 16 << 20), "meta.png")
        assert "metadata (text or a colour profile) too large to read safely" in message


class TestZip:
    def test_bad_crc_names_the_member(self):
        data = zip_with_bad_crc("0001.dcm", make_dicom(head_phantom(64) * 10))
        assert "0001.dcm in the zip is damaged or cannot be unpacked (Bad CRC-32" in refusal(data, "crc.zip")

    def test_a_member_larger_than_it_declares_is_refused_unread(self, tmp_path):
        path = tmp_path / "lying.zip"
        write_zip_of_zeros(path, 64 << 20)
        data = declare_zip_size(path.read_bytes(), 4096)
        tracemalloc.start()
        message = refusal(data, "lying.zip")
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert "scan.dcm in the zip is damaged" in message
        assert peak < 8 << 20  # read whole, the member would take 64 MiB

    def test_declared_sizes_over_the_limit_are_refused(self, tmp_path):
        path = tmp_path / "big.zip"
        write_zip_of_zeros(path, 1 << 20)
        data = declare_zip_size(path.read_bytes(), MAX_UNCOMPRESSED_BYTES + 1)
        assert f"unpacks to more than {MAX_UNCOMPRESSED_BYTES >> 20} MiB" in refusal(data, "big.zip")

    def test_thousands_of_members_are_refused(self):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for index in range(2001):
                archive.writestr(f"{index}.txt", b"")
        assert "holds 2,001 files" in refusal(buffer.getvalue(), "many.zip")


class TestNifti:
    def test_a_huge_declared_volume_is_refused_before_unpacking(self):
        header = nib.Nifti1Header()
        header.set_data_shape((512, 512, 256))
        header.set_data_dtype(np.float64)
        header["vox_offset"] = 352
        data = gzip.compress(header.binaryblock + bytes(4) + bytes(1 << 20))
        assert "declares 512x512x256 voxels, more than the 33,554,432" in refusal(data, "big.nii.gz")

    @pytest.mark.slow
    def test_a_gzip_bomb_stops_at_the_limit(self, tmp_path):
        path = tmp_path / "bomb.nii.gz"
        write_nifti_gz(path, (64, 64, 64))
        with gzip.open(path, "ab", compresslevel=1) as handle:  # a second gzip member of zeros
            block = bytes(1 << 20)
            for _ in range((MAX_UNCOMPRESSED_BYTES >> 20) + 1):
                handle.write(block)
        message = refusal(path.read_bytes(), "bomb.nii.gz")
        assert f"unpacks to more than {MAX_UNCOMPRESSED_BYTES >> 20} MiB" in message

    def test_float64_is_converted_a_slice_at_a_time(self):
        volume = np.zeros((256, 256, 64))
        volume[60:120, 60:140, 20:40] = 100.5
        data = nib.Nifti1Image(volume, np.diag([-1.0, 1, 1, 1])).to_bytes()  # stored LAS: turned to RAS
        tracemalloc.start()
        read = read_volume(data, "scan.nii")
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert read.pixels.dtype == np.float32 and read.pixels.max() == 100.5
        # The float32 volume and its axial copy; a float64 intermediate would add twice the volume again.
        assert peak < 2.5 * volume.size * 4


# --- The CLI on each hostile file, in a fresh process that reports its own peak memory -----------------------------


@pytest.fixture(scope="module")
def hostile_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("hostile")
    made = {
        "frames999.dcm": dicom_declaring(256, 256, 999, 100),
        "wide4096.dcm": dicom_declaring(4096, 4096, 1, 100),
        "pages.tif": tiff_pages([13000] * 5 + [64]),
        "crc.zip": zip_with_bad_crc("0001.dcm", make_dicom(head_phantom(64) * 10)),
        "iccp.png": png_with_chunk(b"iCCP", 200 << 20),
        "ztxt.png": png_with_chunk(b"zTXt", 200 << 20),
    }
    for name, data in made.items():
        (folder / name).write_bytes(data)
    write_dicom_with_excess(folder / "excess.dcm", 300 << 20)
    write_nifti_gz(folder / "volume.nii.gz", (512, 512, 256))
    write_zip_of_zeros(folder / "honest.zip", 1 << 30)
    (folder / "lying.zip").write_bytes(declare_zip_size((folder / "honest.zip").read_bytes(), 4096))
    return {path.name: path for path in folder.iterdir()}


HOSTILE = ["frames999.dcm", "wide4096.dcm", "excess.dcm", "volume.nii.gz", "pages.tif", "honest.zip", "lying.zip",
           "crc.zip", "iccp.png", "ztxt.png"]


# The CLI's main, then the process's peak resident memory (VmHWM) written to argv[1]. Read inside the process: a
# child's ru_maxrss counts the parent's resident memory at fork, and pytest's is over 1 GiB here.
PEAK_REPORTING_CLI = """
import sys
from pathlib import Path
from mriseg.cli import main
code = main(sys.argv[2:])
status = Path("/proc/self/status").read_text().splitlines()
Path(sys.argv[1]).write_text(next(line for line in status if line.startswith("VmHWM:")).split()[1])
sys.exit(code)
"""


def predict(path: Path, out: Path) -> tuple[int, str, float]:
    """``mriseg predict path`` in a fresh process: exit code, stderr, and the process's peak memory in MiB."""
    peak = out.with_suffix(".peak")
    done = subprocess.run([sys.executable, "-c", PEAK_REPORTING_CLI, str(peak), "predict", str(path), "--out",
                           str(out), "--no-progress"], capture_output=True, text=True, cwd=REPO_ROOT, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(REPO_ROOT), MRISEG_HF_REPO=""))
    return done.returncode, done.stderr, int(peak.read_text()) / 1024


@pytest.fixture(scope="module")
def baseline_mib(tmp_path_factory) -> float:
    """The CLI's peak segmenting one valid slice: the model loaded, torch's working memory."""
    folder = tmp_path_factory.mktemp("baseline")
    import cv2

    (folder / "slice.png").write_bytes(cv2.imencode(".png", head_phantom(96).astype(np.uint8))[1].tobytes())
    code, stderr, peak = predict(folder / "slice.png", folder / "out")
    assert code == 0, stderr
    return peak


@pytest.mark.slow
@pytest.mark.parametrize("name", HOSTILE)
def test_cli_refuses_within_the_memory_budget(name, hostile_files, baseline_mib, tmp_path):
    code, stderr, peak = predict(hostile_files[name], tmp_path / "out")
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 1 and len(errors) == 1 and errors[0].startswith(f"error: {name}: "), stderr
    for noise in ("Traceback", "unexpected", "Warning", "WARN"):
        assert noise not in stderr, stderr
    print(f"{name}: peak {peak:.0f} MiB, baseline {baseline_mib:.0f} MiB")
    assert peak - baseline_mib < SESSION_MEMORY_BUDGET >> 20


def test_interleaved_reads_on_threads_leave_warnings_and_logs_as_they_were():
    """Streamlit reads several sessions' files at once: a read ending while another goes on must neither un-quiet
    that one nor leave the process quiet after both."""
    import logging
    import threading

    from mriseg.data.io import quiet_decoders

    filters_before, level_before = list(warnings.filters), logging.getLogger("pydicom").level
    first_inside, second_inside, first_done = threading.Event(), threading.Event(), threading.Event()
    heard = []  # what the second reader finds once the first, which started before it, has finished

    def first_reader():
        with quiet_decoders():
            first_inside.set()
            second_inside.wait(10)
        first_done.set()

    def second_reader():
        first_inside.wait(10)
        with quiet_decoders():
            second_inside.set()
            first_done.wait(10)
            heard.append((warnings.filters[0], logging.getLogger("pydicom").level))

    threads = [threading.Thread(target=first_reader), threading.Thread(target=second_reader)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert list(warnings.filters) == filters_before
    assert logging.getLogger("pydicom").level == level_before
    assert heard == [(("ignore", None, Warning, None, 0), logging.CRITICAL + 1)]  # still quiet
