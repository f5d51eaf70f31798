"""A mask as a DICOM Segmentation (SEG) object that references the series it was made from, for PACS and
DICOM viewers (OHIF, 3D Slicer, Orthanc), written with highdicom.

A SEG stores one binary frame for each source frame it marks, in that frame's own pixel grid, and names the source
images by their UIDs, so a viewer lays it over the series it came from. mriseg's masks are axial slices in RAS+
(see :mod:`mriseg.data.io`); each source frame's pixels are found in that array through the frame's position,
orientation and spacing (the geometry SimpleITK read the series with), so sagittal and coronal series get their
mask in their own plane.
"""

from __future__ import annotations

import io

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from mriseg.errors import InputError

SEGMENT_LABEL = "FLAIR abnormality"
ALGORITHM_NAME = "mriseg U-Net"
SERIES_NUMBER = 9901  # a derived series, numbered away from the scanner's own
# A frame's pixel centres land this close to the mask's voxel centres when the two grids are the same grid.
GRID_TOLERANCE = 0.01
# What a SEG needs from its source: without these it cannot say which study, patient and space it belongs to.
REQUIRED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")
# Patient and study attributes a SEG copies from its source; DICOM lets them be empty (type 2), so an anonymised
# series that dropped them gets them empty rather than no SEG.
MAY_BE_EMPTY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID", "StudyDate", "StudyTime",
                "ReferringPhysicianName", "AccessionNumber")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def header(content: bytes) -> Dataset:
    """A DICOM file's header read into memory without its pixel data (what a SEG needs of its source)."""
    return pydicom.dcmread(io.BytesIO(content), stop_before_pixels=True)


def frame_geometry(dataset: Dataset) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """For each frame of ``dataset``: (ImagePositionPatient, ImageOrientationPatient, PixelSpacing) as arrays.

    A classic image has one frame; an enhanced multi-frame image gives each frame's position (and spacing) in its
    functional groups, which highdicom and viewers read the same way.
    """
    if "PerFrameFunctionalGroupsSequence" not in dataset:
        return [(np.asarray(dataset.ImagePositionPatient, float), np.asarray(dataset.ImageOrientationPatient, float),
                 np.asarray(dataset.PixelSpacing, float))]
    shared = (dataset.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
    frames = []
    for groups in dataset.PerFrameFunctionalGroupsSequence:
        def item(keyword: str, groups: Dataset = groups) -> Dataset:
            return (groups.get(keyword) or shared.get(keyword))[0]
        frames.append((np.asarray(item("PlanePositionSequence").ImagePositionPatient, float),
                       np.asarray(item("PlaneOrientationSequence").ImageOrientationPatient, float),
                       np.asarray(item("PixelMeasuresSequence").PixelSpacing, float)))
    return frames


def source_frames(mask_ras: np.ndarray, affine: np.ndarray, headers: list[Dataset]) -> np.ndarray:
    """The mask in each source frame's pixel grid: (frames of every header in order, rows, columns) bool.

    Args:
        mask_ras: the mask as a canonical RAS+ array (x, y, z).
        affine: its voxel-to-world (RAS+) affine.
        headers: the source images.

    Raises:
        InputError: a frame's pixels are not voxels of the mask (the series is not the grid that was segmented).
    """
    to_voxel = np.linalg.inv(affine)
    frames = []
    for dataset in headers:
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        for position, orientation, spacing in frame_geometry(dataset):
            # DICOM: a row runs along the first direction (column index), PixelSpacing is (between rows, columns).
            start = to_voxel[:3, :3] @ (LPS_TO_RAS @ position) + to_voxel[:3, 3]
            along_row = to_voxel[:3, :3] @ (LPS_TO_RAS @ orientation[:3]) * spacing[1]
            down_column = to_voxel[:3, :3] @ (LPS_TO_RAS @ orientation[3:]) * spacing[0]
            r, c = np.mgrid[:rows, :columns]
            voxels = start + r[..., None] * down_column + c[..., None] * along_row
            index = np.rint(voxels).astype(int)
            if np.abs(voxels - index).max() > GRID_TOLERANCE or (index < 0).any() or \
                    (index >= mask_ras.shape).any():
                raise InputError(f"{dataset.get('SOPInstanceUID', 'a source image')}: its pixels do not lie on the "
                                 "segmented grid, so no DICOM SEG can reference it")
            frames.append(mask_ras[index[..., 0], index[..., 1], index[..., 2]])
    return np.asarray(frames, dtype=bool)


def _copy(dataset: Dataset) -> Dataset:
    """A data set whose elements can be set without touching ``dataset`` (pydicom's copies share their elements'
    dictionary)."""
    copy = Dataset()
    copy.update(dataset)
    return copy


def with_missing_empty(dataset: Dataset) -> Dataset:
    """``dataset`` with the patient and study attributes a SEG copies that DICOM lets be empty, added empty."""
    missing = [keyword for keyword in MAY_BE_EMPTY if keyword not in dataset]
    if not missing:
        return dataset
    copy = _copy(dataset)
    for keyword in missing:
        setattr(copy, keyword, "")
    return copy


def with_shared_geometry(dataset: Dataset) -> Dataset:
    """An enhanced multi-frame source as highdicom reads it: highdicom takes the pixel measures and orientation from
    the shared functional groups only, and a file may give them per frame (the same for every frame: see
    :func:`seg_problem`)."""
    if "PerFrameFunctionalGroupsSequence" not in dataset:
        return dataset
    copy = _copy(dataset)
    shared = _copy((dataset.get("SharedFunctionalGroupsSequence") or [Dataset()])[0])
    first = dataset.PerFrameFunctionalGroupsSequence[0]
    for keyword in ("PixelMeasuresSequence", "PlaneOrientationSequence"):
        if keyword not in shared:
            setattr(shared, keyword, first[keyword].value)
    copy.SharedFunctionalGroupsSequence = [shared]
    return copy


def seg_problem(headers: list[Dataset]) -> str | None:
    """Why no DICOM SEG can be made of this series (None when one can): the attributes a SEG references that the
    series lacks (an anonymiser may have removed them), or a multi-frame file whose frames differ in pixel spacing
    or orientation (a SEG shares one for all its frames)."""
    missing = [name for name in REQUIRED if any(name not in dataset for dataset in headers)]
    if missing:
        return (f"the series has no {', '.join(missing)} (removed by anonymisation?), so a SEG could not "
                "reference it")
    for dataset in headers:
        geometry = frame_geometry(dataset)
        if any(not np.allclose(spacing, geometry[0][2]) or not np.allclose(orientation, geometry[0][1])
               for _, orientation, spacing in geometry):
            return "the frames of the multi-frame file differ in pixel spacing or orientation"
    return None


def mask_to_dicom_seg(mask_ras: np.ndarray, affine: np.ndarray, headers: list[Dataset], *,
                      model_version: str) -> bytes:
    """A DICOM SEG file of ``mask_ras`` that references the source series ``headers``.

    Args:
        mask_ras: the mask as a canonical RAS+ array, on the grid the series was read into.
        affine: its voxel-to-world (RAS+) affine.
        headers: the source images' headers, any order (see :func:`header`).
        model_version: the weights' version, recorded as the algorithm's version.

    Raises:
        InputError: :func:`seg_problem` names a problem, or the series' pixels are not the segmented grid.
    """
    import highdicom as hd

    problem = seg_problem(headers)
    if problem:
        raise InputError(f"no DICOM SEG: {problem}; the NIfTI mask has the same content")
    frames = source_frames(mask_ras, affine, headers)
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=ALGORITHM_NAME, version=model_version, family=codes.DCM.ArtificialIntelligence),
    )
    source = headers[0]
    segmentation = hd.seg.Segmentation(
        source_images=[with_shared_geometry(with_missing_empty(dataset)) for dataset in headers],
        pixel_array=frames,  # (every frame of every header, rows, columns), in their order
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=generate_uid(), series_number=SERIES_NUMBER,
        sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer="mriseg", manufacturer_model_name=ALGORITHM_NAME, software_versions=model_version,
        device_serial_number="none",
        series_description=f"mriseg tumour mask of {source.get('SeriesDescription', 'series')}"[:64],
        content_description="For teaching and research only; not for diagnosis",
        omit_empty_frames=bool(frames.any()),  # a SEG needs one frame: an empty mask keeps every frame
    )
    buffer = io.BytesIO()
    segmentation.save_as(buffer)
    return buffer.getvalue()
