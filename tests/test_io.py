"""Readers: every format on files generated here, and every kind of bad input."""

from __future__ import annotations

import gzip
import io
import time
import zipfile

import cv2
import nibabel as nib
import numpy as np
import pytest
from dicom_helpers import (
    LPS_TO_RAS,
    ORIGIN,
    PLANES,
    SPACING,
    axial_slices,
    blob_volume,
    canonical_affine,
    enhanced_dicom,
    series_zip,
    stack,
)
from helpers import SAMPLES, head_phantom, make_dicom
from PIL import Image

from mriseg.data.io import MAX_SIDE, MAX_SLICES, mask_to_nifti, mask_to_png, read_mask, read_volume
from mriseg.errors import InputError


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


class BaseReaderTest:
    """Contract every reader meets; subclasses only say how to write a file of their format."""

    extension = ""
    lossless = True

    def encode(self, pixels: np.ndarray) -> bytes:
        raise NotImplementedError

    def phantom(self) -> np.ndarray:
        return head_phantom(96)

    def test_reads_one_slice_with_the_right_shape_and_content(self):
        pixels = self.phantom()
        volume = read_volume(self.encode(pixels), f"scan{self.extension}")
        assert volume.shape == (1, *pixels.shape)
        assert volume.pixels.dtype == np.float32
        assert correlation(volume.pixels[0], pixels) > (0.999 if self.lossless else 0.95)
        assert volume.source["filename"] == f"scan{self.extension}"

    def test_truncated_file_is_rejected(self):
        data = self.encode(self.phantom())
        with pytest.raises(InputError, match="corrupt|truncated|not a"):
            read_volume(data[: len(data) // 3], f"scan{self.extension}")

    def test_constant_image_is_rejected(self):
        with pytest.raises(InputError, match="same value"):
            read_volume(self.encode(np.full((64, 64), 7, np.float32)), f"flat{self.extension}")

    def test_empty_file_is_rejected(self):
        with pytest.raises(InputError, match="empty"):
            read_volume(b"", f"scan{self.extension}")

    def test_too_small_is_rejected(self):
        with pytest.raises(InputError, match="at least 32x32"):
            read_volume(self.encode(head_phantom(96)[:20, :30]), f"tiny{self.extension}")

    def test_text_content_is_rejected(self):
        with pytest.raises(InputError):
            read_volume(b"this is a text file, not a scan" * 20, f"notes{self.extension}")


def _cv2_encode(pixels: np.ndarray, extension: str, dtype=np.uint8) -> bytes:
    ok, data = cv2.imencode(extension, pixels.astype(dtype))
    assert ok
    return data.tobytes()


class TestPNG8(BaseReaderTest):
    extension = ".png"

    def encode(self, pixels):
        return _cv2_encode(pixels, ".png")


class TestPNG16(BaseReaderTest):
    extension = ".png"

    def encode(self, pixels):
        return _cv2_encode(pixels * 200, ".png", np.uint16)

    def test_keeps_16_bit_depth(self):
        volume = read_volume(self.encode(self.phantom()), "scan.png")
        assert volume.source["bits"] == 16 and volume.pixels.max() > 255


class TestJPEG(BaseReaderTest):
    extension = ".jpg"
    lossless = False

    def encode(self, pixels):
        return _cv2_encode(pixels, ".jpg")


class TestBMP(BaseReaderTest):
    extension = ".bmp"

    def encode(self, pixels):
        return _cv2_encode(pixels, ".bmp")


class TestTIFF(BaseReaderTest):
    extension = ".tif"

    def encode(self, pixels):
        return _cv2_encode(pixels, ".tiff", np.uint16)

    def test_kaggle_three_channel_tiff_takes_flair_channel_1(self):
        flair = head_phantom(96, seed=1)
        other = head_phantom(96, seed=2)[::-1]
        rgb = np.stack([other, flair, other[:, ::-1]], axis=-1).astype(np.uint8)  # (pre, FLAIR, post) as RGB
        buffer = io.BytesIO()
        Image.fromarray(rgb, mode="RGB").save(buffer, format="TIFF")
        volume = read_volume(buffer.getvalue(), "TCGA_XX_0000_1.tif")
        np.testing.assert_array_equal(volume.pixels[0], flair.astype(np.uint8))
        assert volume.source["flair_channel_taken"]

    def test_multipage_tiff_is_a_stack(self):
        pages = [Image.fromarray(head_phantom(64, seed=s).astype(np.uint8)) for s in range(5)]
        buffer = io.BytesIO()
        pages[0].save(buffer, format="TIFF", save_all=True, append_images=pages[1:])
        volume = read_volume(buffer.getvalue(), "stack.tiff")
        assert volume.shape == (5, 64, 64)
        np.testing.assert_array_equal(volume.pixels[3], np.asarray(pages[3], dtype=np.float32))


class TestColourPNG:
    def test_colour_png_becomes_gray(self):
        gray = head_phantom(64).astype(np.uint8)
        volume = read_volume(_cv2_encode(np.stack([gray] * 3, axis=-1), ".png"), "screenshot.png")
        np.testing.assert_allclose(volume.pixels[0], gray, atol=1)


class TestDICOM(BaseReaderTest):
    extension = ".dcm"

    def encode(self, pixels):
        return make_dicom(pixels * 10)

    def test_modality_lut_and_spacing(self):
        stored = (head_phantom(64) * 10).astype(np.uint16)
        volume = read_volume(make_dicom(stored, slope=2.0, intercept=-100, spacing=(0.7, 0.8)), "mr.dcm")
        np.testing.assert_allclose(volume.pixels[0], stored * 2.0 - 100)
        assert volume.spacing == (0.7, 0.8, 5.0)
        assert volume.pixel_area_mm2 == pytest.approx(0.56)

    def test_without_pixel_spacing_sizes_stay_in_pixels(self):
        volume = read_volume(make_dicom(head_phantom(64) * 10, spacing=None), "screen.dcm")
        assert volume.spacing is None and volume.pixel_area_mm2 is None
        assert volume.affine is not None  # a mask still goes back voxel for voxel

    def test_multiframe(self):
        frames = np.stack([head_phantom(64, seed=s) * 10 for s in range(4)])
        volume = read_volume(make_dicom(frames, frames=True), "cine.dcm")
        assert volume.shape == (4, 64, 64)
        np.testing.assert_allclose(volume.pixels[2], frames[2].astype(np.uint16))

    def test_zip_series_is_sorted_by_position(self):
        slices = [head_phantom(64, seed=s) * 10 for s in range(5)]
        z_order = [3, 0, 4, 1, 2]  # stored out of order, instance numbers misleading on purpose
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for index, z in enumerate(z_order):
                data = make_dicom(slices[z], position=(0, 0, 2.5 * z), instance=10 - index)
                archive.writestr(f"series/IM{index:04d}.dcm", data)
            archive.writestr("series/README.txt", "exported by a scanner")
        volume = read_volume(buffer.getvalue(), "series.zip")
        assert volume.shape == (5, 64, 64)
        for z in range(5):
            np.testing.assert_allclose(volume.pixels[z], slices[z].astype(np.uint16))
        assert volume.spacing == (0.5, 0.5, 2.5)
        assert volume.voxel_volume_ml == pytest.approx(0.5 * 0.5 * 2.5 / 1000)

    def test_zip_series_with_a_missing_slice_is_refused(self):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for z in (0, 1, 2, 4, 5):
                archive.writestr(f"IM{z}.dcm", make_dicom(head_phantom(64, seed=z) * 10, position=(0, 0, 2.5 * z)))
        with pytest.raises(InputError, match=r"unevenly spaced \(2.50 to 5.00 mm apart\): a slice is missing"):
            read_volume(buffer.getvalue(), "gap.zip")

    def test_not_dicom(self):
        with pytest.raises(InputError, match="not a DICOM"):
            read_volume(b"\x00" * 1000, "scan.dcm")


class TestNIfTI(BaseReaderTest):
    extension = ".nii"

    def encode(self, pixels):
        # Written in RAS+ so the reader's radiological view gives back the same picture.
        array = np.asarray(pixels, dtype=np.float32)[None][:, ::-1, ::-1].transpose(2, 1, 0)
        return nib.Nifti1Image(np.ascontiguousarray(array), np.eye(4)).to_bytes()

    def test_volume_gz_with_spacing(self):
        volume_ras = np.random.default_rng(0).random((48, 40, 6)).astype(np.float32)
        image = nib.Nifti1Image(volume_ras, np.diag([0.9, 1.1, 3.0, 1.0]))
        volume = read_volume(gzip.compress(image.to_bytes()), "brain.nii.gz")
        assert volume.shape == (6, 40, 48)
        assert volume.spacing == pytest.approx((1.1, 0.9, 3.0))
        # Slice 0 is the most inferior; anterior (high y) at the top; the radiological view puts the patient's
        # right on the image's left.
        np.testing.assert_allclose(volume.pixels[0], volume_ras[:, :, 0].T[::-1, ::-1])

    def test_4d_is_rejected_with_a_clear_message(self):
        data = nib.Nifti1Image(np.random.default_rng(0).random((40, 40, 5, 3)).astype(np.float32), np.eye(4))
        with pytest.raises(InputError, match="4 dimensions"):
            read_volume(data.to_bytes(), "fmri.nii")

    def test_nan_is_rejected(self):
        array = np.random.default_rng(0).random((40, 40, 3)).astype(np.float32)
        array[5, 5, 1] = np.nan
        with pytest.raises(InputError, match="NaN"):
            read_volume(nib.Nifti1Image(array, np.eye(4)).to_bytes(), "bad.nii")

    def test_mask_round_trip_lands_on_the_image(self):
        array = np.random.default_rng(0).random((48, 40, 6)).astype(np.float32)
        affine = np.diag([0.9, 1.1, 3.0, 1.0])
        volume = read_volume(nib.Nifti1Image(array, affine).to_bytes(), "brain.nii")
        mask = volume.pixels > 0.7
        written = nib.Nifti1Image.from_bytes(gzip.decompress(mask_to_nifti(mask, volume)))
        np.testing.assert_array_equal(np.asarray(written.dataobj) > 0, array > 0.7)
        np.testing.assert_allclose(written.affine, affine)


# Stored the way a NIfTI converter might: other axis signs than the DICOM planes above.
NIFTI_PLANES = {"axial": ((-1, 0, 0), (0, -1, 0)), "sagittal": ((0, -1, 0), (0, 0, 1)),
                "coronal": ((-1, 0, 0), (0, 0, 1))}


def nifti_file(volume: np.ndarray, row, column) -> bytes:
    slices, affine = stack(volume, row, column)
    # NIfTI indexes (column, row, slice), in RAS+ world coordinates.
    return nib.Nifti1Image(slices.transpose(2, 1, 0), LPS_TO_RAS @ affine[:, [2, 1, 0, 3]]).to_bytes()


def world_points(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World coordinates of a mask's voxels, sorted, to compare masks stored in different voxel orders."""
    points = nib.affines.apply_affine(affine, np.argwhere(mask)).round(3)
    return points[np.lexsort(points.T)]


class TestScannerSpace:
    """NIfTI and DICOM in any plane come back as the same axial slices, placed in the same world space."""

    @pytest.mark.parametrize("plane", list(PLANES))
    @pytest.mark.parametrize("kind", ["DICOM series", "NIfTI"])
    def test_every_plane_and_format_gives_the_same_axial_slices(self, kind, plane):
        volume = blob_volume()
        if kind == "NIfTI":
            read = read_volume(nifti_file(volume, *NIFTI_PLANES[plane]), f"{plane}.nii")
        else:
            read = read_volume(series_zip(*stack(volume, *PLANES[plane])), f"{plane}.zip")
        np.testing.assert_array_equal(read.pixels, axial_slices(volume))
        assert read.spacing == pytest.approx((1.1, 0.9, 2.0))
        np.testing.assert_allclose(read.affine, canonical_affine(), atol=1e-4)
        assert read.source["plane"] == plane

    @pytest.mark.parametrize("plane", list(PLANES))
    def test_mask_written_back_lands_on_the_blob_in_world_space(self, plane):
        volume = blob_volume()
        read = read_volume(series_zip(*stack(volume, *PLANES[plane])), f"{plane}.zip")
        written = nib.Nifti1Image.from_bytes(gzip.decompress(mask_to_nifti(read.pixels > 500, read)))
        blob_world = LPS_TO_RAS[:3, :3] @ (ORIGIN + np.argwhere(volume > 500) * SPACING).T
        expected = blob_world.T.round(3)
        np.testing.assert_allclose(world_points(np.asarray(written.dataobj) > 0, written.affine),
                                   expected[np.lexsort(expected.T)], atol=1e-3)

    @pytest.mark.parametrize(("degrees", "accepted"), [(25, True), (35, False)])
    def test_oblique_series_is_turned_to_axial_within_the_tolerance(self, degrees, accepted):
        volume = blob_volume()
        slices, affine = stack(volume, *PLANES["axial"])
        angle = np.radians(degrees)
        tilt = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
        affine[:3, :3] = tilt @ affine[:3, :3]
        data = series_zip(slices, affine)
        if not accepted:
            with pytest.raises(InputError, match=f"tilted {degrees}° from the nearest scanner axis.*within 30°"):
                read_volume(data, "oblique.zip")
            return
        read = read_volume(data, "oblique.zip")
        np.testing.assert_array_equal(read.pixels, axial_slices(volume))
        # The tilt stays in the affine, so the mask goes back where the slices were acquired.
        assert np.degrees(nib.affines.obliquity(read.affine)).max() == pytest.approx(degrees, abs=0.01)

    def test_enhanced_multiframe_orders_frames_by_position_and_keeps_spacing(self):
        volume = blob_volume()
        read = read_volume(enhanced_dicom(volume, *PLANES["sagittal"]), "enhanced.dcm")
        np.testing.assert_array_equal(read.pixels, axial_slices(volume))
        assert read.spacing == pytest.approx((1.1, 0.9, 2.0))
        np.testing.assert_allclose(read.affine, canonical_affine(), atol=1e-4)

    def test_enhanced_multiframe_with_frames_at_one_position_is_refused(self):
        with pytest.raises(InputError, match="several frames lie at one position"):
            read_volume(enhanced_dicom(blob_volume(), *PLANES["axial"], duplicate=True), "echoes.dcm")

    def test_zip_of_two_series_is_refused(self):
        volume = blob_volume()
        first = zipfile.ZipFile(io.BytesIO(series_zip(*stack(volume, *PLANES["axial"]), series="1.2.3")))
        second = zipfile.ZipFile(io.BytesIO(series_zip(*stack(volume, *PLANES["axial"]), series="1.2.4")))
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for name, source in (("a", first), ("b", second)):
                for info in source.infolist():
                    archive.writestr(f"{name}/{info.filename}", source.read(info))
        with pytest.raises(InputError, match="belong to 2 series"):
            read_volume(buffer.getvalue(), "study.zip")

    @pytest.mark.parametrize("kind", ["NIfTI", "DICOM"])
    def test_few_sagittal_slices_are_too_small_once_axial(self, kind):
        if kind == "NIfTI":
            data = nifti_file(blob_volume()[:8], *NIFTI_PLANES["sagittal"])
            name, expected = "sagittal.nii", "8 sagittal slice.*40x8 pixels.*32x32"
        else:
            data = make_dicom(head_phantom(64) * 10, position=(0, 0, 0), orientation=(0, 1, 0, 0, 0, -1))
            name, expected = "sagittal.dcm", "1 sagittal slice.*64x1 pixels.*32x32"
        with pytest.raises(InputError, match=expected):
            read_volume(data, name)


class TestLimits:
    @pytest.mark.slow
    def test_thousands_of_tiff_pages_are_refused_before_decoding(self):
        pages = [Image.fromarray(head_phantom(32, seed=s).astype(np.uint8)) for s in range(3000)]
        buffer = io.BytesIO()
        pages[0].save(buffer, format="TIFF", save_all=True, append_images=pages[1:])
        started = time.perf_counter()
        with pytest.raises(InputError, match="more than 1,000 pages.*at most 1,000 slices"):
            read_volume(buffer.getvalue(), "stack.tif")
        assert time.perf_counter() - started < 5

    def test_dicom_with_too_many_frames_is_refused(self):
        frames = np.ones((MAX_SLICES + 1, 32, 32))
        with pytest.raises(InputError, match="1,001 slices; mriseg segments at most 1,000"):
            read_volume(make_dicom(frames, frames=True), "long.dcm")

    def test_nifti_with_too_many_axial_slices_is_refused(self):
        image = nib.Nifti1Image(np.ones((32, 32, MAX_SLICES + 1), np.uint8), np.eye(4))
        with pytest.raises(InputError, match="1,001 slices; mriseg segments at most 1,000"):
            read_volume(image.to_bytes(), "long.nii")

    def test_rgb_nifti_names_its_data_type(self):
        rgb = np.zeros((40, 40, 3), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
        with pytest.raises(InputError, match=r"data type is RGB \(\[\('R', 'u1'\)"):
            read_volume(nib.Nifti1Image(rgb, np.eye(4)).to_bytes(), "colour.nii")


class TestBadInput:
    def test_unsupported_extension(self):
        with pytest.raises(InputError, match="unsupported file type '.docx'"):
            read_volume(b"PK\x03\x04 something", "report.docx")

    def test_decompression_bomb_is_refused_before_decoding(self):
        # A 1-bit PNG of 20000x20000 is a few kB on disk but 400 MB decoded.
        buffer = io.BytesIO()
        Image.new("1", (20000, 20000)).save(buffer, format="PNG")
        assert len(buffer.getvalue()) < 200_000
        with pytest.raises(InputError, match=f"too large.*{MAX_SIDE}"):
            read_volume(buffer.getvalue(), "bomb.png")

    def test_zip_without_dicom(self):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("notes.txt", "hello")
        with pytest.raises(InputError, match="no DICOM"):
            read_volume(buffer.getvalue(), "series.zip")

    def test_zip_with_paths_outside_the_archive(self):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("../../etc/evil.dcm", make_dicom(head_phantom(64) * 10))
        with pytest.raises(InputError, match="outside the archive"):
            read_volume(buffer.getvalue(), "series.zip")

    def test_broken_zip(self):
        with pytest.raises(InputError, match="not a valid zip"):
            read_volume(b"PK\x03\x04 not really", "series.zip")


class TestMasks:
    def test_sample_mask_reads_as_binary(self, slice_samples):
        entry = next(e for e in slice_samples if e["tumour_pixels"] > 0)
        mask = read_mask((SAMPLES / entry["mask"]).read_bytes(), entry["mask"], (1, 256, 256))
        assert mask.dtype == bool and int(mask.sum()) == entry["tumour_pixels"]

    def test_empty_mask_is_valid(self):
        mask = read_mask(_cv2_encode(np.zeros((64, 64)), ".png"), "empty_mask.png")
        assert not mask.any()

    def test_grayscale_image_is_not_a_mask(self):
        with pytest.raises(InputError, match="not a binary mask"):
            read_mask(_cv2_encode(head_phantom(64), ".png"), "image.png")

    def test_shape_mismatch(self):
        with pytest.raises(InputError, match="must match the image"):
            read_mask(_cv2_encode(np.zeros((64, 64)), ".png"), "mask.png", expected_shape=(1, 256, 256))

    def test_png_writer_round_trip(self):
        mask = np.zeros((40, 50), bool)
        mask[10:20, 5:30] = True
        np.testing.assert_array_equal(read_mask(mask_to_png(mask), "m.png")[0], mask)
