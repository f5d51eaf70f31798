"""Reading MRI files: bytes + file name -> :class:`Volume` (slices x H x W, float32) with spacing and metadata.

Supported: PNG, JPEG, BMP, TIFF (8/16 bit, gray or colour, multi-page TIFF as a stack; a 3-channel TIFF in the
Kaggle LGG layout stacks pre-contrast, FLAIR, post-contrast, so channel 1 is taken), DICOM (single file,
multi-frame, a .zip of a series, or the loose files of one series: :func:`read_dicom_files`; a file with no or an
unknown extension is read as DICOM when its content starts like one) and NIfTI (.nii, .nii.gz). NIfTI and DICOM are
placed in scanner space and turned to axial slices (the model's view); :mod:`mriseg.data.dicom` reads DICOM geometry.
Every problem raises :class:`InputError`.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import math
import threading
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import cv2
import numpy as np
from PIL import Image, ImageSequence, UnidentifiedImageError

from mriseg.errors import InputError

if TYPE_CHECKING:
    from nibabel import Nifti1Image
    from pydicom.dataset import Dataset

RASTER_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DICOM_EXTENSIONS = (".dcm", ".dicom", ".ima")
NIFTI_EXTENSIONS = (".nii", ".nii.gz")
ZIP_EXTENSIONS = (".zip",)
SUPPORTED_EXTENSIONS = RASTER_EXTENSIONS + DICOM_EXTENSIONS + NIFTI_EXTENSIONS + ZIP_EXTENSIONS

MIN_SIDE = 32
# MRI slices are 256-1024 px a side; the app's pictures of one slice cost about 85 bytes a pixel (a 4096x4096 slice
# took a session to +1.4 GiB), so 2048 px keeps one slice within the budget below.
MAX_SIDE = 2048
# The most one visitor's session of the app may cost: 30-40 students share a 24 GiB server.
SESSION_MEMORY_BUDGET = 1 << 30
# After decoding, the app holds about 30 bytes a voxel (pixels, probabilities, packed threshold masks), so a session
# stays within its budget up to 2**25 voxels (512x512x128 or 256x256x512; a BraTS volume is 240x240x155, 8.9 M).
MAX_VOXELS = 1 << 25
# A brain volume has a few hundred slices; thousands of small ones tie the server up for minutes.
MAX_SLICES = 1000
# Slices tilted up to this far from the nearest scanner axis are segmented as acquired: clinical axial FLAIR is often
# angled 15-25° along the AC-PC line, and the training slices were too. Nearer 45° the slice plane is not one of
# axial, sagittal or coronal any more, and only resampling could give axial slices.
MAX_TILT_DEGREES = 30
PLANES = ("sagittal", "coronal", "axial")  # slices across the x (left-right), y, z (foot-head) world axis
# What a zip or .nii.gz may unpack to, counted as it unpacks: half the session budget, as the unpacked bytes are held
# while the volume is decoded from them (a volume at MAX_VOXELS in float64 takes 256 MiB).
MAX_UNCOMPRESSED_BYTES = SESSION_MEMORY_BUDGET // 2
# Unpacked a piece at a time, so a lying size in a zip or gzip header is caught after this much, not after all of it.
UNPACK_CHUNK = 1 << 20
# A zip holds one series of at most MAX_SLICES files, and maybe a few others beside it (DICOMDIR, a README).
MAX_ZIP_MEMBERS = 2 * MAX_SLICES
NIFTI_HEADER_BYTES = 540  # a NIfTI-2 header; a NIfTI-1 header is 348
# A label mask holds background 0 and a few whole-number labels up to this (BraTS: 1 necrotic core, 2 oedema,
# 4 or 3 enhancing tumour); larger values are grey levels, not labels.
MAX_LABEL = 15
# A pixel is coloured when its channels differ by more than this share of full scale (JPEG noise on a grey picture
# stays far below).
COLOUR_CHANNEL_SPREAD = 0.12


@dataclass(frozen=True)
class StoredGrid:
    """How a NIfTI file stored its voxels, so a mask can go back in the same order.

    Attributes:
        affine: the file's own voxel-to-world affine.
        shape: the file's array shape (a 2D file stays 2D, a 4D file with one volume keeps its trailing 1).
        orientation: nibabel orientation of the file's axes (:func:`nibabel.orientations.io_orientation`).
    """

    affine: np.ndarray
    shape: tuple[int, ...]
    orientation: np.ndarray


@dataclass
class Volume:
    """An image volume as mriseg uses it.

    Attributes:
        pixels: (slices, H, W) float32 intensities, axial slices in head order.
        spacing: (row mm, column mm, slice mm) when the format records it, else None.
        source: what the file was: format, file name, bit depth, channel taken, slice count; for a raster file
            the share of coloured pixels, for DICOM the modality its header names.
        affine: for NIfTI and DICOM input, the RAS+ voxel-to-world affine of the canonical array, so a mask written
            back lands where the image is in scanner space.
        stored_grid: for NIfTI input, the file's own voxel order and affine: :func:`mask_to_nifti` writes masks in
            it, so a mask's array lines up voxel for voxel with the input's.
        dicom_headers: for DICOM input, each file's header without its pixel data: what a DICOM SEG of the mask
            references (:func:`mriseg.data.dicom_seg.mask_to_dicom_seg`).
    """

    pixels: np.ndarray
    spacing: tuple[float, float, float] | None = None
    source: dict = field(default_factory=dict)
    affine: np.ndarray | None = None
    stored_grid: StoredGrid | None = None
    dicom_headers: list[Dataset] | None = None

    @property
    def n_slices(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.pixels.shape)

    @property
    def pixel_area_mm2(self) -> float | None:
        return None if self.spacing is None else self.spacing[0] * self.spacing[1]

    @property
    def voxel_volume_ml(self) -> float | None:
        return None if self.spacing is None else self.spacing[0] * self.spacing[1] * self.spacing[2] / 1000.0


def file_kind(filename: str) -> str:
    """``raster``, ``dicom``, ``nifti`` or ``zip`` from the file name; InputError for anything else."""
    name = filename.lower()
    if name.endswith(NIFTI_EXTENSIONS):
        return "nifti"
    suffix = Path(name).suffix
    if suffix in RASTER_EXTENSIONS:
        return "raster"
    if suffix in DICOM_EXTENSIONS:
        return "dicom"
    if suffix in ZIP_EXTENSIONS:
        return "zip"
    raise InputError(
        f"{filename}: unsupported file type '{suffix or 'no extension'}'. "
        f"mriseg reads: {', '.join(SUPPORTED_EXTENSIONS)}"
    )


def _check_shape(filename: str, shape: tuple[int, ...]) -> None:
    """Refuse a (slices, H, W) shape mriseg cannot segment in reasonable time or at all."""
    height, width = shape[-2], shape[-1]
    if shape[0] < 1:
        raise InputError(f"{filename}: the header declares {shape[0]} slices; the file holds no image")
    if shape[0] > MAX_SLICES:
        raise InputError(f"{filename}: {shape[0]:,} slices; mriseg segments at most {MAX_SLICES:,} slices in one file")
    if min(height, width) < MIN_SIDE:
        raise InputError(f"{filename}: image is {height}x{width} pixels; at least {MIN_SIDE}x{MIN_SIDE} is needed")
    if max(height, width) > MAX_SIDE or int(np.prod(shape)) > MAX_VOXELS:
        raise InputError(
            f"{filename}: image of {'x'.join(map(str, shape))} voxels is too large (limit {MAX_SIDE} px a side and "
            f"{MAX_VOXELS:,} voxels, what one session's {SESSION_MEMORY_BUDGET >> 30} GiB holds); crop or downsample "
            "it first"
        )


def _to_gray(array: np.ndarray, take_channel: int | None) -> np.ndarray:
    """(H, W) or (H, W, C) -> (H, W) float32."""
    if array.ndim == 2:
        return array.astype(np.float32)
    channels = array[..., :3] if array.shape[-1] >= 3 else array[..., :1]
    if take_channel is not None and channels.shape[-1] == 3:
        return channels[..., take_channel].astype(np.float32)
    return channels.astype(np.float32).mean(axis=-1)


def _read_raster(data: bytes, filename: str) -> Volume:
    try:
        with Image.open(io.BytesIO(data)) as image:
            # The headers give every page's size before anything is decoded: the decompression-bomb guard.
            n_frames, height, width = _check_pages(image, filename)
            image_format = image.format
    except InputError:
        raise
    except UnidentifiedImageError as error:
        raise InputError(f"{filename}: not a readable image (the content is not {Path(filename).suffix})") from error
    except Image.DecompressionBombError as error:
        raise InputError(
            f"{filename}: image is too large to decode safely (limit {MAX_SIDE} px a side and {MAX_VOXELS:,} voxels)"
        ) from error
    except OSError as error:
        raise InputError(f"{filename}: the image is corrupt or truncated ({error})") from error
    except ValueError as error:  # Pillow's own guard: a text or colour-profile chunk that inflates too far
        raise InputError(f"{filename}: the image carries metadata (text or a colour profile) too large to read "
                         "safely; save the picture again without it") from error

    is_tiff = image_format == "TIFF"
    # Kaggle LGG TIFFs stack (pre-contrast, FLAIR, post-contrast); OpenCV's BGR order keeps index 1 in place.
    take_channel = 1 if is_tiff else None
    buffer = np.frombuffer(data, dtype=np.uint8)
    if is_tiff and n_frames > 1:
        ok, pages = cv2.imdecodemulti(buffer, cv2.IMREAD_UNCHANGED)
        frames = list(pages) if ok else []
    else:
        decoded = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
        frames = [] if decoded is None else [decoded]
    if not frames:
        frames = _decode_with_pillow(data, filename)
    pixels = np.empty((len(frames), height, width), np.float32)
    for index, frame in enumerate(frames):
        if frame.shape[:2] != (height, width):
            raise InputError(f"{filename}: page {index + 1} decodes to {frame.shape[0]}x{frame.shape[1]} pixels, "
                             f"not the {height}x{width} its header gives; the file is damaged")
        pixels[index] = _to_gray(frame, take_channel)
    dtype = frames[0].dtype
    return Volume(
        pixels,
        None,
        {
            "format": image_format or "image",
            "bits": int(np.dtype(dtype).itemsize * 8),
            "channels": 1 if frames[0].ndim == 2 else int(frames[0].shape[-1]),
            "flair_channel_taken": take_channel is not None and frames[0].ndim == 3,
            "colour_share": colour_share(frames[0]),
        },
    )


def colour_share(pixels: np.ndarray) -> float:
    """Share of pixels whose colour channels differ by more than ``COLOUR_CHANNEL_SPREAD`` of full scale: how much
    real colour a decoded picture holds (0 for grey, whatever the number of channels it was stored with).

    Example:
        >>> colour_share(np.dstack([np.full((40, 40), v, np.uint8) for v in (20, 90, 200)]))
        1.0
    """
    if pixels.ndim != 3 or pixels.shape[-1] < 3:
        return 0.0
    colour = pixels[::2, ::2, :3].astype(np.float32)  # every other pixel: the share, not the picture, is wanted
    full_scale = np.iinfo(pixels.dtype).max if np.issubdtype(pixels.dtype, np.integer) else 1.0
    spread = colour.max(axis=-1) - colour.min(axis=-1)
    return float(np.mean(spread > COLOUR_CHANNEL_SPREAD * full_scale))


def _check_pages(image: Image.Image, filename: str) -> tuple[int, int, int]:
    """(pages, height, width) of an image, each page's size and the pages so far checked as its header is reached.

    Pillow reads a page's header on seeking to it and decodes nothing until pixels are asked for, so a huge page
    after small ones, or too many pages, is refused before anything is decoded. The walk stops at ``MAX_SLICES + 1``
    pages: walking every page of a huge TIFF is slow.
    """
    height, width = image.height, image.width
    pages = 1
    while True:
        _check_shape(filename, (pages, image.height, image.width))  # this page, and the voxels of all so far
        if (image.height, image.width) != (height, width):
            raise InputError(f"{filename}: the pages of this TIFF differ in size ({height}x{width}, then "
                             f"{image.height}x{image.width} on page {pages}); a stack needs equal pages")
        try:
            image.seek(pages)  # page by page: Pillow's count after a seek past the end is the page asked for
        except EOFError:
            return pages, height, width
        pages += 1
        if pages > MAX_SLICES:
            raise InputError(f"{filename}: more than {MAX_SLICES:,} pages; mriseg segments at most {MAX_SLICES:,} "
                             "slices in one file")


def _decode_with_pillow(data: bytes, filename: str) -> list[np.ndarray]:
    """Fallback decoder (formats or modes OpenCV refuses); a failure here means the file is broken."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return [np.array(frame.convert("I") if frame.mode in ("I;16", "I;16B") else frame)
                    for frame in ImageSequence.Iterator(image)]
    except (OSError, ValueError) as error:
        raise InputError(f"{filename}: the image is corrupt or truncated and cannot be decoded") from error


def _read_dicom(data: bytes, filename: str) -> Volume:
    return _dicom_volume([_dicom_image(data, filename)], filename, "DICOM")


def _dicom_image(content: bytes, name: str) -> tuple[bytes, Dataset]:
    """One DICOM image file (content, parsed header), its declared shape and then the length of its pixel data
    checked before anything is decoded or written to disk."""
    from mriseg.data import dicom

    dataset = dicom.parse(content, name)
    _check_shape(name, dicom.series_shape([dataset], name))
    dicom.check_pixel_data(dataset, len(content), name)
    return content, dataset


def _safe_member(name: str) -> bool:
    path = PurePosixPath(name.replace("\\", "/"))
    return not path.is_absolute() and ".." not in path.parts and not (path.parts and ":" in path.parts[0])


def read_dicom_files(files: list[tuple[str, bytes]], filename: str) -> Volume:
    """Read the loose DICOM files of one series (or one multi-frame file) into a :class:`Volume`.

    A folder of .dcm files (or of DICOM files without an extension) is how series usually arrive; this reads them
    like a zip of the series, with the same SimpleITK geometry, without zipping them first.

    Args:
        files: (file name, content) of each file; every one must be a DICOM image of the same series.
        filename: what the messages call the series (a folder and series label, say).

    Raises:
        InputError: as :func:`read_volume` does, naming the file at fault where one is.
    """
    if not files:
        raise InputError(f"{filename}: no DICOM files")
    if sum(len(content) for _, content in files) > MAX_UNCOMPRESSED_BYTES:
        raise InputError(f"{filename}: the series holds more than {MAX_UNCOMPRESSED_BYTES >> 20} MiB, the most "
                         "mriseg reads at once; give one series")
    with _reading(filename):
        images = []
        for name, content in files:
            if not content:
                raise InputError(f"{name}: the file is empty")
            images.append(_dicom_image(content, name))
        kind = "DICOM" if len(images) == 1 else "DICOM series (files)"
        return _not_constant(_checked(_dicom_volume(images, filename, kind), filename), filename)


def _read_dicom_zip(data: bytes, filename: str) -> Volume:
    from mriseg.data import dicom

    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as error:
        raise InputError(f"{filename}: not a valid zip archive") from error
    with archive:
        members = [info for info in archive.infolist() if not info.is_dir()]
        unsafe = [info.filename for info in members if not _safe_member(info.filename)]
        if unsafe:
            raise InputError(f"{filename}: the zip has paths outside the archive ({unsafe[0]}); refusing it")
        if len(members) > MAX_ZIP_MEMBERS:
            raise InputError(f"{filename}: the zip holds {len(members):,} files; mriseg reads one series of at most "
                             f"{MAX_SLICES:,} slices. Zip one series")
        if sum(info.file_size for info in members) > MAX_UNCOMPRESSED_BYTES:
            raise InputError(f"{filename}: the zip unpacks to more than {MAX_UNCOMPRESSED_BYTES >> 20} MiB, the most "
                             "mriseg reads; zip one series")
        images, left = [], MAX_UNCOMPRESSED_BYTES
        for info in members:
            content = _unzip_member(archive, info, left, filename)
            left -= len(content)
            try:
                dataset = dicom.parse(content, info.filename)
            except InputError:
                continue  # READMEs, thumbnails and DICOMDIR-like files sit beside series in real exports
            if "PixelData" in dataset:
                images.append(_dicom_image(content, f"{filename}: {info.filename}"))
    if not images:
        raise InputError(f"{filename}: the zip contains no DICOM image files")
    return _dicom_volume(images, filename, "DICOM series (zip)")


def _unzip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, left: int, filename: str) -> bytes:
    """A zip member's bytes, refused once more than ``left`` come out: counted as they are unpacked, since the
    sizes a zip declares may lie."""
    unpacked = io.BytesIO()
    try:
        with archive.open(info) as member:
            while chunk := member.read(UNPACK_CHUNK):
                unpacked.write(chunk)
                if unpacked.tell() > left:
                    raise InputError(f"{filename}: the zip unpacks to more than {MAX_UNCOMPRESSED_BYTES >> 20} MiB "
                                     f"(reached in {info.filename}), the most mriseg reads; zip one series")
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as error:
        # A bad CRC, a cut or garbled stream, an unknown compression method, a password
        raise InputError(f"{filename}: {info.filename} in the zip is damaged or cannot be unpacked "
                         f"({error})") from error

    return unpacked.getvalue()


def _dicom_volume(images: list[tuple[bytes, Dataset]], filename: str, kind: str) -> Volume:

    """The DICOM files of one scan (content, parsed header) as axial slices with their scanner-space affine."""
    from mriseg.data import dicom, dicom_seg

    datasets = [dataset for _, dataset in images]
    _check_shape(filename, dicom.series_shape(datasets, filename))  # before any pixel is decoded
    image = dicom.scanner_image(images, filename)
    volume = _axial_volume(image, filename, {"format": kind, "bits": int(datasets[0].get("BitsAllocated", 16)),
                                             "frames": sum(dicom.frame_count(dataset) for dataset in datasets),
                                             "modality": str(datasets[0].get("Modality", "")).upper() or None})
    if not dicom.records_pixel_spacing(datasets[0]):
        volume.spacing = None  # the geometry's 1 mm stands in for an unknown size: sizes stay in pixels
    volume.dicom_headers = [dicom_seg.header(content) for content, _ in images]
    return volume


def ras_to_slices(array: np.ndarray) -> np.ndarray:
    """RAS+ (x to the patient's right, y anterior, z superior) -> axial slices shown the radiological way:
    anterior at the top, the patient's right on the image's left."""
    return np.ascontiguousarray(np.transpose(array, (2, 1, 0))[:, ::-1, ::-1])


def slices_to_ras(slices: np.ndarray) -> np.ndarray:
    """Inverse of :func:`ras_to_slices`."""
    return np.ascontiguousarray(np.transpose(slices[:, ::-1, ::-1], (2, 1, 0)))


def _axial_volume(image: Nifti1Image, filename: str, source: dict,
                  stored_shape: tuple[int, ...] | None = None) -> Volume:
    """A nibabel image in scanner space as axial slices, turned to the nearest RAS+ axes without resampling.

    NIfTI and DICOM both come through here, so one scan stored either way gives the same slices. ``stored_shape``,
    the shape of the file's own array, asks to record its voxel order (:class:`StoredGrid`) for masks written back.
    """
    import nibabel as nib

    orientation = nib.io_orientation(image.affine)  # per voxel axis: (nearest world axis, flipped)
    if np.isnan(orientation).any():
        raise InputError(f"{filename}: the voxel-to-world geometry is degenerate (an axis of zero length, or "
                         "slices at one position); the scan cannot be placed in space")
    tilt = float(np.degrees(nib.affines.obliquity(image.affine)).max())
    if tilt > MAX_TILT_DEGREES:
        raise InputError(f"{filename}: the slices are tilted {tilt:.0f}° from the nearest scanner axis; mriseg turns "
                         f"scans to axial only when they lie within {MAX_TILT_DEGREES}° of an axis. Reslice the "
                         "scan to axial first")
    plane = PLANES[int(orientation[2, 0])]
    ras_shape = [0, 0, 0]
    for axis, (world_axis, _) in enumerate(orientation):
        ras_shape[int(world_axis)] = image.shape[axis]
    slices_shape = (ras_shape[2], ras_shape[1], ras_shape[0])
    if plane != "axial" and min(slices_shape[1:]) < MIN_SIDE:
        raise InputError(
            f"{filename}: the scan holds {image.shape[2]} {plane} slice(s); mriseg segments axial slices, and "
            f"turned to axial these are {slices_shape[1]}x{slices_shape[2]} pixels, under the {MIN_SIDE}x{MIN_SIDE} "
            "needed. Give an axial scan, or the whole volume"
        )
    _check_shape(filename, slices_shape)
    try:
        # Read as float32 a slice at a time, then turned (flips and transposes are views, not copies): a float64 or
        # scaled file never exists whole in its own type beside the float32 volume.
        canonical = nib.as_closest_canonical(nib.Nifti1Image(_float32_slices(image.dataobj), image.affine))
        array = np.asarray(canonical.dataobj)
    except Exception as error:
        raise InputError(f"{filename}: the image data are truncated or unreadable ({error})") from error
    # From the float64 affine: the header's float32 zooms would turn a DICOM's 0.7 mm into 0.699999988 mm.
    voxel = nib.affines.voxel_sizes(canonical.affine)
    spacing = (float(voxel[1]), float(voxel[0]), float(voxel[2]))
    grid = None if stored_shape is None else StoredGrid(image.affine, tuple(stored_shape), orientation)
    return Volume(ras_to_slices(array), spacing, {**source, "plane": plane}, canonical.affine, grid)


def _float32_slices(dataobj) -> np.ndarray:
    """A 3D image's voxels as float32; from a file (an array proxy), read and converted one slice at a time."""
    if isinstance(dataobj, np.ndarray):
        return dataobj.astype(np.float32, copy=False)
    array = np.empty(dataobj.shape, np.float32)
    for index in range(dataobj.shape[-1]):  # the last axis: each slice one contiguous block of the file
        array[..., index] = dataobj[..., index]
    return array


def _read_nifti(data: bytes, filename: str) -> Volume:
    import nibabel as nib

    if filename.lower().endswith(".gz"):
        stream = _inflate_nifti(data, filename)
    else:
        _check_nifti_header(data[:NIFTI_HEADER_BYTES], filename)
        stream = io.BytesIO(data)
    try:
        image = nib.Nifti1Image.from_stream(stream)
    except Exception:
        try:
            image = nib.Nifti2Image.from_stream(stream)
        except Exception as error:
            raise InputError(f"{filename}: not a NIfTI file, or a corrupt or truncated one") from error
    dtype = image.get_data_dtype()
    if dtype.fields is not None or dtype.kind == "c":
        raise InputError(
            f"{filename}: the NIfTI data type is {image.header.get_value_label('datatype')} ({dtype}), not one "
            "grey-scale intensity per voxel; save the scan with a scalar type such as int16 or float32"
        )
    shape = image.shape
    if len(shape) > 3 and any(n > 1 for n in shape[3:]):
        raise InputError(
            f"{filename}: NIfTI has {len(shape)} dimensions {shape}; mriseg reads 2D or 3D volumes. "
            "Extract one 3D volume (e.g. one time point) first"
        )
    if len(shape) < 2:
        raise InputError(f"{filename}: NIfTI has {len(shape)} dimension(s); an image needs at least 2")
    spatial = (*shape[:3], *[1] * (3 - len(shape)))
    if shape != spatial:  # a 2D image gains a slice axis, a 4D one loses its trailing 1s; the data stay unread
        image = type(image)(image.dataobj.reshape(spatial), image.affine, image.header)
    return _axial_volume(image, filename, {"format": "NIfTI", "dtype": str(dtype)}, stored_shape=shape)


def _inflate_nifti(data: bytes, filename: str) -> io.BytesIO:
    """A .nii.gz unpacked a piece at a time: the header's shape is checked from the first piece, and unpacking
    stops at ``MAX_UNCOMPRESSED_BYTES``, so neither a huge volume nor a gzip bomb is unpacked whole."""
    unpacked = io.BytesIO()
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as unzipped:
            while chunk := unzipped.read(UNPACK_CHUNK):
                if not unpacked.tell():
                    _check_nifti_header(chunk[:NIFTI_HEADER_BYTES], filename)
                unpacked.write(chunk)
                if unpacked.tell() > MAX_UNCOMPRESSED_BYTES:
                    raise InputError(f"{filename}: unpacks to more than {MAX_UNCOMPRESSED_BYTES >> 20} MiB, the "
                                     "most mriseg reads; crop or downsample the scan first")
    except (OSError, EOFError, zlib.error) as error:
        raise InputError(f"{filename}: the gzip data is corrupt or truncated") from error
    unpacked.seek(0)
    return unpacked


def _check_nifti_header(head: bytes, filename: str) -> None:
    """Refuse a NIfTI file whose header declares more voxels than mriseg reads, before any data are read."""
    import nibabel as nib

    for header_type in (nib.Nifti1Header, nib.Nifti2Header):
        with contextlib.suppress(Exception):  # nibabel raises many types for a header not of its kind
            shape = header_type.from_fileobj(io.BytesIO(head)).get_data_shape()
            break
    else:
        return  # no NIfTI header: reading the file names the problem
    if math.prod(shape) > MAX_VOXELS:
        raise InputError(f"{filename}: the NIfTI header declares {'x'.join(map(str, shape))} voxels, more than the "
                         f"{MAX_VOXELS:,} one session's {SESSION_MEMORY_BUDGET >> 30} GiB holds; crop or downsample "
                         "the scan first")


READERS = {"raster": _read_raster, "dicom": _read_dicom, "zip": _read_dicom_zip, "nifti": _read_nifti}


def _decode(data: bytes, filename: str) -> Volume:
    from mriseg.data.dicom import looks_like_dicom

    if not data:
        raise InputError(f"{filename}: the file is empty")
    if len(data) > MAX_UNCOMPRESSED_BYTES:
        raise InputError(f"{filename}: {len(data) >> 20} MiB, larger than any scan mriseg reads (at most "
                         f"{MAX_UNCOMPRESSED_BYTES >> 20} MiB); crop or downsample it first")
    try:
        kind = file_kind(filename)
    except InputError:
        # Scanners and PACS exports often write DICOM files without an extension (or as IM.0001): the content says.
        if not looks_like_dicom(data):
            raise
        kind = "dicom"
    with _reading(filename):
        return _checked(READERS[kind](data, filename), filename)


@contextlib.contextmanager
def _reading(filename: str) -> Iterator[None]:
    """Around the reading of one file: the decoders kept quiet, and any failure one :class:`InputError` naming it.

    The readers turn the failures they foresee into specific messages; this catches what a decoder raises on damage
    nobody foresaw, so a user still gets one line rather than a traceback.
    """
    with quiet_decoders():
        try:
            yield
        except InputError:
            raise
        except MemoryError as error:
            raise InputError(f"{filename}: the server ran out of memory reading it; try again later, or with a "
                             "smaller scan") from error
        except Exception as error:
            raise InputError(f"{filename}: could not be read ({type(error).__name__}: {str(error)[:200]})") from error


class _QuietDecoders:
    """Keep the decoders' warnings about a damaged or unusual file off stderr while files are read: what matters
    reaches the user as an :class:`InputError`. pydicom and nibabel also log what they find (nibabel the header
    fields it would fix), so their loggers are silenced meanwhile.

    Warning filters and logger levels belong to the whole process, and the app reads several sessions' files on
    threads of their own: the first reader silences, the last one out restores, so interleaved reads can never
    leave the process silenced (or a read unsilenced).
    """

    LOGGERS = ("pydicom", "nibabel")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._readers = 0
        self._saved_levels: list[int] = []
        self._filters: warnings.catch_warnings | None = None

    def __enter__(self) -> None:
        with self._lock:
            if self._readers == 0:
                logs = [logging.getLogger(name) for name in self.LOGGERS]
                self._saved_levels = [log.level for log in logs]
                for log in logs:
                    log.setLevel(logging.CRITICAL + 1)
                self._filters = warnings.catch_warnings()
                self._filters.__enter__()
                warnings.simplefilter("ignore")
            self._readers += 1

    def __exit__(self, *exception: object) -> None:
        with self._lock:
            self._readers -= 1
            if self._readers == 0:
                self._filters.__exit__(None, None, None)
                for name, level in zip(self.LOGGERS, self._saved_levels, strict=True):
                    logging.getLogger(name).setLevel(level)


_QUIET = _QuietDecoders()


def quiet_decoders() -> _QuietDecoders:
    """A context in which the decoders are quiet (see :class:`_QuietDecoders`)."""
    return _QUIET


def _checked(volume: Volume, filename: str) -> Volume:
    """The checks every decoded file passes, whatever its format: finite values, a shape mriseg segments."""
    volume.source.setdefault("filename", filename)
    volume.source["slices"] = volume.n_slices
    if not np.all(np.isfinite(volume.pixels)):
        raise InputError(f"{filename}: the image contains NaN or infinite values")
    _check_shape(filename, volume.pixels.shape)
    volume.pixels = volume.pixels.astype(np.float32, copy=False)
    return volume


def read_volume(data: bytes, filename: str) -> Volume:
    """Read an image file's bytes into a :class:`Volume`.

    Args:
        data: the file's content.
        filename: its name; the extension chooses the reader.

    Returns:
        The volume with spacing (when known) and source metadata.

    Raises:
        InputError: with a message naming the problem (empty, unsupported, corrupt, constant, too small ...).

    Example:
        >>> import cv2, numpy as np
        >>> ok, png = cv2.imencode(".png", np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
        >>> read_volume(png.tobytes(), "slice.png").shape
        (1, 64, 64)
    """
    return _not_constant(_decode(data, filename), filename)


def _not_constant(volume: Volume, filename: str) -> Volume:
    if float(volume.pixels.max()) == float(volume.pixels.min()):
        raise InputError(f"{filename}: every pixel has the same value; there is no image to segment")
    return volume


def read_mask(data: bytes, filename: str, expected_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Read a ground-truth mask file: a boolean (slices, H, W) array.

    The file is read like an image: binary (two levels such as 0/1 or 0/255, up to compression noise), or a label
    mask (see :func:`read_label_mask`), of which every label > 0 counts (for BraTS labels: the whole tumour).

    Raises:
        InputError: when it is neither, or its shape differs from ``expected_shape``.
    """
    return labels_to_mask(*read_label_mask(data, filename, expected_shape))


def read_label_mask(data: bytes, filename: str,
                    expected_shape: tuple[int, ...] | None = None) -> tuple[np.ndarray, tuple[int, ...]]:
    """Read a ground-truth mask file as labels: a (slices, H, W) uint8 array and the labels > 0 it holds.

    A label mask (background 0 and at least two labels, whole numbers up to ``MAX_LABEL``, such as BraTS's 1, 2, 4)
    keeps its labels; a binary mask comes back as labels 0 and 1.

    Raises:
        InputError: when the file is neither, or its shape differs from ``expected_shape``.

    Example:
        >>> brats = np.zeros((64, 64), np.uint8); brats[10:30, 10:30] = 2; brats[15:25, 15:25] = 4
        >>> brats[18:22, 18:22] = 1
        >>> labels, values = read_label_mask(cv2.imencode(".png", brats)[1].tobytes(), "brats.png")
        >>> values
        (1, 2, 4)
        >>> int(labels_to_mask(labels, values).sum()), int(labels_to_mask(labels, (1, 4)).sum())
        (400, 100)
    """
    pixels = _decode(data, filename).pixels
    values = _label_values(pixels)
    if values is not None:
        labels = pixels.astype(np.uint8)
    else:
        labels = _binary_levels(pixels, filename).astype(np.uint8)
        values = (1,) if labels.any() else ()
    if expected_shape is not None and tuple(labels.shape) != tuple(expected_shape):
        raise InputError(
            f"{filename}: mask is {'x'.join(map(str, labels.shape))} (slices x H x W) but the image is "
            f"{'x'.join(map(str, expected_shape))}; the mask must match the image it belongs to"
        )
    return labels, values


def labels_to_mask(labels: np.ndarray, chosen: tuple[int, ...] | list[int]) -> np.ndarray:
    """The boolean mask of the ``chosen`` labels.

    Example:
        >>> labels_to_mask(np.array([0, 1, 2, 4]), (1, 4)).tolist()
        [False, True, False, True]
    """
    return np.isin(labels, list(chosen))


def _label_values(pixels: np.ndarray) -> tuple[int, ...] | None:
    """The labels > 0 of a label mask: background 0 plus two or more whole numbers up to ``MAX_LABEL``; else None.

    Small whole numbers only: compression noise on a 0/255 mask, or a grey picture, gives other values.
    """
    if float(pixels.min()) != 0 or float(pixels.max()) > MAX_LABEL:
        return None
    labels = pixels.astype(np.uint8)
    if not np.array_equal(labels, pixels):
        return None
    present = np.flatnonzero(np.bincount(labels.ravel(), minlength=MAX_LABEL + 1))
    return tuple(int(value) for value in present[1:]) if len(present) > 2 else None


def _binary_levels(pixels: np.ndarray, filename: str) -> np.ndarray:
    """A two-level picture (0/1, 0/255, ... up to compression noise) as a boolean mask of its upper level."""
    low, high = float(pixels.min()), float(pixels.max())
    if high == low:
        return np.zeros(pixels.shape, dtype=bool) if high <= 0 else np.ones(pixels.shape, dtype=bool)
    span = high - low
    in_between = (pixels > low + 0.1 * span) & (pixels < high - 0.1 * span)
    if in_between.mean() > 0.01:
        raise InputError(
            f"{filename}: not a binary mask ({in_between.mean():.0%} of pixels lie between the two levels); "
            "a mask holds only background and tumour values such as 0 and 255, or a few labels such as BraTS's "
            "0, 1, 2, 4"
        )
    return pixels > (low + high) / 2


def read_image_file(path: str | Path) -> np.ndarray:
    """One 2D slice of a data set on disk (float32, H x W); blank slices (outside the head) are allowed."""
    path = Path(path)
    return _decode(path.read_bytes(), path.name).pixels[0]


def read_mask_file(path: str | Path) -> np.ndarray:
    """One 2D boolean mask from a file on disk."""
    path = Path(path)
    return read_mask(path.read_bytes(), path.name)[0]


def mask_to_png(mask: np.ndarray) -> bytes:
    """A 2D mask as an 8-bit PNG with values 0 and 255 (the Kaggle LGG convention)."""
    ok, encoded = cv2.imencode(".png", np.asarray(mask, dtype=np.uint8) * 255)
    if not ok:
        raise ValueError("could not encode the mask as PNG")
    return encoded.tobytes()


def mask_to_nifti(mask: np.ndarray, volume: Volume) -> bytes:
    """A (slices, H, W) mask as gzipped NIfTI (uint8 0/1) aligned with the volume it was predicted on.

    A NIfTI input gets its mask in its own voxel order, shape and affine (:attr:`Volume.stored_grid`), so the two
    arrays line up voxel for voxel, as challenge scripts compare them. Any other input gets the RAS+ voxel order of
    the axial slices: a DICOM series with its scanner-space affine (its stored order is a stack of files, not one
    array a mask could copy), a raster stack with its spacing when known. The header's ``descrip`` says which.
    """
    import nibabel as nib
    from nibabel import orientations

    ras = slices_to_ras(np.asarray(mask, dtype=np.uint8))
    grid = volume.stored_grid
    if grid is not None:
        to_file = orientations.ornt_transform(orientations.axcodes2ornt("RAS"), grid.orientation)
        data, affine = orientations.apply_orientation(ras, to_file).reshape(grid.shape), grid.affine
        description = "mriseg mask, voxel order and affine of the input"
    else:
        row, column, thickness = volume.spacing or (1.0, 1.0, 1.0)
        data = ras
        affine = volume.affine if volume.affine is not None else np.diag([column, row, thickness, 1.0])
        description = "mriseg mask, RAS+ voxel order (axial slices)"
    image = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    image.header["descrip"] = description
    return gzip.compress(image.to_bytes(), compresslevel=6)


def mask_to_dicom_seg(mask: np.ndarray, volume: Volume, *, model_version: str) -> bytes:
    """A (slices, H, W) mask of a DICOM volume as a DICOM SEG that references its source series.

    Raises:
        InputError: the volume is not DICOM, or its series lacks what a SEG must reference
            (:func:`mriseg.data.dicom_seg.mask_to_dicom_seg`).
    """
    from mriseg.data import dicom_seg

    if volume.dicom_headers is None or volume.affine is None:
        raise InputError("a DICOM SEG can only be made for a DICOM scan; this one has a NIfTI or PNG mask")
    return dicom_seg.mask_to_dicom_seg(slices_to_ras(np.asarray(mask, dtype=bool)), volume.affine,
                                       volume.dicom_headers, model_version=model_version)
