"""Plain helpers the tests share: where things are, files made in the test (DICOM, phantoms, hostile files),
colour contrast."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLES = REPO_ROOT / "samples"
WEIGHTS = REPO_ROOT / "weights"


def mr_dataset(sop_class: str):
    """A grey-scale MR DICOM data set of ``sop_class`` with its file meta, ready for pixels."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    return ds


def make_dicom(pixels: np.ndarray, *, slope: float = 1.0, intercept: float = 0.0, spacing=(0.5, 0.5),
               position: tuple[float, float, float] | None = None, instance: int = 1, frames: bool = False,
               window: tuple[float, float] | None = None,
               orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0), series: str | None = None,
               **attributes) -> bytes:
    """A real DICOM file (MR, 16-bit unsigned) written with pydicom; ``orientation`` (ImageOrientationPatient) is
    written with ``position``, ``spacing=None`` leaves PixelSpacing out, and ``attributes`` (keyword: value) are
    written as they are."""
    from pydicom.uid import MRImageStorage

    pixels = np.asarray(pixels, dtype=np.uint16)
    ds = mr_dataset(MRImageStorage)
    ds.PatientName = "Test^Phantom"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if frames:
        ds.NumberOfFrames = pixels.shape[0]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    if spacing is not None:
        ds.PixelSpacing = list(spacing)
    ds.SliceThickness = 5.0
    ds.InstanceNumber = instance
    if series is not None:
        ds.SeriesInstanceUID = series
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if position is not None:
        ds.ImagePositionPatient = list(position)
        ds.ImageOrientationPatient = [float(value) for value in orientation]
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.PixelData = pixels.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def dicom_declaring(rows: int, columns: int, frames: int, pixel_bytes: int) -> bytes:
    """A 16-bit MR DICOM whose header declares ``frames`` images of ``rows`` x ``columns`` while its PixelData
    holds ``pixel_bytes`` zero bytes: short, exact or excess pixel data."""
    from pydicom.uid import MRImageStorage

    ds = mr_dataset(MRImageStorage)
    ds.PatientName = "Test^Hostile"
    ds.Rows, ds.Columns = rows, columns
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = bytes(pixel_bytes)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_dicom_with_excess(path: Path, excess: int) -> None:
    """A 64x64 DICOM whose pixel data run ``excess`` bytes past the image, written as a sparse file (cheap to make
    however large): the PixelData length is patched and the file extended with a hole."""
    exact = 64 * 64 * 2
    data = dicom_declaring(64, 64, 1, exact)
    tag = data.rindex(b"\xe0\x7f\x10\x00OW\x00\x00")  # PixelData, explicit VR little endian: the last element
    length = tag + 8
    with open(path, "wb") as handle:
        handle.write(data[:length] + struct.pack("<I", exact + excess) + data[length + 4:])
        handle.truncate(len(data) + excess)


def write_nifti_gz(path: Path, shape: tuple[int, int, int], dtype=np.float64) -> None:
    """A valid .nii.gz of zeros with a bright block in the middle slice, streamed slice by slice (a 512 MiB volume
    costs a few MiB to make)."""
    import gzip

    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_sform(np.eye(4), code=1)
    header["vox_offset"] = 352
    blank = np.zeros(shape[:2], dtype)
    blob = blank.copy()
    blob[shape[0] // 3 : shape[0] // 2, shape[1] // 3 : shape[1] // 2] = 100
    with gzip.open(path, "wb", compresslevel=1) as handle:
        handle.write(header.binaryblock + bytes(4))  # 348-byte header, then an empty extension flag
        for index in range(shape[2]):
            handle.write((blob if index == shape[2] // 2 else blank).tobytes(order="F"))


def tiff_pages(sides: list[int]) -> bytes:
    """A multi-page 1-bit LZW TIFF (a blank 13000x13000 page takes about 140 kB) with square pages of ``sides``."""
    from PIL import Image

    made = {side: Image.new("1", (side, side)) for side in set(sides)}  # one image per size: pages repeat
    pages = [made[side] for side in sides]
    buffer = io.BytesIO()
    pages[0].save(buffer, format="TIFF", compression="tiff_lzw", save_all=True, append_images=pages[1:])
    return buffer.getvalue()


def png_with_chunk(kind: bytes, inflated: int) -> bytes:
    """A 64x64 PNG carrying an ancillary ``kind`` chunk (b"iCCP" or b"zTXt") whose compressed text or colour
    profile inflates to ``inflated`` bytes."""
    import cv2

    png = cv2.imencode(".png", head_phantom(64).astype(np.uint8))[1].tobytes()
    packer = zlib.compressobj(9)
    block = bytes(1 << 20)
    body = b"".join(packer.compress(block) for _ in range(inflated >> 20)) + packer.flush()
    payload = kind + b"name\x00\x00" + body
    chunk = struct.pack(">I", len(payload) - 4) + payload + struct.pack(">I", zlib.crc32(payload))
    after_header = 8 + 25  # the signature, then the IHDR chunk every PNG opens with
    return png[:after_header] + chunk + png[after_header:]


def write_zip_of_zeros(path: Path, size: int) -> None:
    """A zip whose one member (scan.dcm) inflates to ``size`` zero bytes."""
    block = bytes(1 << 20)
    with (zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive,
          archive.open("scan.dcm", "w") as member):
        for _ in range(size >> 20):
            member.write(block)


def declare_zip_size(data: bytes, declared: int) -> bytes:
    """A one-member zip whose headers claim the member unpacks to ``declared`` bytes, whatever it holds."""
    data = bytearray(data)
    data[22:26] = struct.pack("<I", declared)  # the local header's uncompressed size
    central = data.rindex(b"PK\x01\x02")
    data[central + 24 : central + 28] = struct.pack("<I", declared)
    return bytes(data)


def zip_with_bad_crc(name: str, content: bytes) -> bytes:
    """A zip holding ``content`` stored (uncompressed) as ``name``, one byte of it changed after the CRC was
    written."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(name, content)
    data = bytearray(buffer.getvalue())
    start = 30 + len(name.encode())  # the local header, then the member's bytes
    data[start + len(content) // 2] ^= 0xFF
    return bytes(data)


def head_phantom(size: int = 96, seed: int = 0) -> np.ndarray:
    """A synthetic head-like slice: dark background, bright ellipse with texture and a brighter blob."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    head = ((yy - size / 2) / (0.42 * size)) ** 2 + ((xx - size / 2) / (0.35 * size)) ** 2 < 1
    blob = (yy - 0.4 * size) ** 2 + (xx - 0.6 * size) ** 2 < (0.1 * size) ** 2
    image = np.where(head, 100 + 20 * rng.random((size, size)), 2 * rng.random((size, size)))
    return (image + 80 * blob).astype(np.float32)


DARK_BACKGROUND = "#0e1117"  # Streamlit's dark theme (.streamlit/config.toml: base = "dark")


def contrast(a: str, b: str) -> float:
    """WCAG contrast ratio of two #rrggbb colours (1 = none, 21 = black on white)."""
    def luminance(colour: str) -> float:
        channels = [int(colour.lstrip("#")[i:i + 2], 16) / 255 for i in (0, 2, 4)]
        linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    light, dark = sorted((luminance(a), luminance(b)), reverse=True)
    return (light + 0.05) / (dark + 0.05)
