"""Readers: every format on files generated here, and every kind of bad input."""

from __future__ import annotations

import gzip
import io
import zipfile

import cv2
import nibabel as nib
import numpy as np
import pytest
from conftest import SAMPLES, head_phantom, make_dicom
from PIL import Image

from mriseg.errors import InputError
from mriseg.io import MAX_SIDE, mask_to_nifti, mask_to_png, read_mask, read_volume


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
