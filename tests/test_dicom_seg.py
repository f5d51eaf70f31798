"""DICOM SEG: a mask written for a DICOM series, read back with highdicom and pydicom, lies on the source frames it
references, in their plane, with their positions and orientation."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pydicom
import pytest
from dicom_helpers import PLANES, blob_volume, enhanced_dicom, series_zip, stack
from pydicom.uid import generate_uid

from mriseg.data.io import mask_to_dicom_seg, read_volume
from mriseg.errors import InputError

BLOB = 500  # the test volume's blob is 900, its texture at most 200


def references() -> dict[str, str]:
    """The UIDs a scanner gives every file of one series."""
    return {"StudyInstanceUID": generate_uid(), "SeriesInstanceUID": generate_uid(),
            "FrameOfReferenceUID": generate_uid(), "PatientID": "PHANTOM-1", "SeriesDescription": "FLAIR"}


def source_files(data: bytes) -> dict[str, pydicom.Dataset]:
    """The series' files by SOPInstanceUID."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        files = [pydicom.dcmread(io.BytesIO(archive.read(name))) for name in archive.namelist()]
    return {str(dataset.SOPInstanceUID): dataset for dataset in files}


@pytest.mark.parametrize("plane", ["axial", "sagittal", "coronal"])
def test_seg_frames_lie_on_the_source_frames_they_reference(plane):
    import highdicom as hd

    uids = references()
    data = series_zip(*stack(blob_volume(), *PLANES[plane]), **uids)
    volume = read_volume(data, f"{plane}.zip")
    mask = volume.pixels > BLOB
    seg = hd.seg.segread(io.BytesIO(mask_to_dicom_seg(mask, volume, model_version="0123abcd")))
    sources = source_files(data)

    assert seg.Modality == "SEG"
    assert (seg.StudyInstanceUID, seg.FrameOfReferenceUID) == (uids["StudyInstanceUID"],
                                                               uids["FrameOfReferenceUID"])
    assert {series for _, series, _ in seg.get_source_image_uids()} == {uids["SeriesInstanceUID"]}
    segment = seg.SegmentSequence[0]
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    assert segment.SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion == "0123abcd"
    orientation = seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    marked = 0
    for index, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        source = sources[uid]
        np.testing.assert_allclose(frame.PlanePositionSequence[0].ImagePositionPatient,
                                   source.ImagePositionPatient, atol=1e-3)
        np.testing.assert_allclose(orientation, source.ImageOrientationPatient, atol=1e-6)
        # The frame is the blob as the source image shows it: no flipped or swapped axis.
        np.testing.assert_array_equal(seg.pixel_array[index] > 0, source.pixel_array > BLOB)
        marked += int(seg.pixel_array[index].sum())
    # Only frames with tumour are stored, and together they hold the whole mask.
    assert len(seg.PerFrameFunctionalGroupsSequence) == sum((d.pixel_array > BLOB).any() for d in sources.values())
    assert marked == mask.sum()


def test_an_enhanced_multiframe_file_gets_a_frame_for_each_of_its_frames_with_tumour():
    import highdicom as hd

    uids = references()
    data = enhanced_dicom(blob_volume(), *PLANES["sagittal"], **uids)
    volume = read_volume(data, "enhanced.dcm")
    seg = hd.seg.segread(io.BytesIO(mask_to_dicom_seg(volume.pixels > BLOB, volume, model_version="v")))
    source = pydicom.dcmread(io.BytesIO(data))
    stored = source.pixel_array
    values = stored - 10 * np.arange(len(stored))[:, None, None]  # each frame's own rescale (see enhanced_dicom)
    assert {uid for _, _, uid in seg.get_source_image_uids()} == {source.SOPInstanceUID}
    assert len(seg.PerFrameFunctionalGroupsSequence) == int((values > BLOB).any(axis=(1, 2)).sum())
    for index, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        reference = frame.DerivationImageSequence[0].SourceImageSequence[0]
        number = int(reference.ReferencedFrameNumber)  # 1-based, in the file's own (shuffled) frame order
        np.testing.assert_allclose(
            frame.PlanePositionSequence[0].ImagePositionPatient,
            source.PerFrameFunctionalGroupsSequence[number - 1].PlanePositionSequence[0].ImagePositionPatient)
        np.testing.assert_array_equal(seg.pixel_array[index] > 0, values[number - 1] > BLOB)


def test_an_empty_mask_is_still_a_valid_seg():
    import highdicom as hd

    data = series_zip(*stack(blob_volume(), *PLANES["axial"]), **references())
    volume = read_volume(data, "axial.zip")
    seg = hd.seg.segread(io.BytesIO(mask_to_dicom_seg(np.zeros(volume.shape, bool), volume, model_version="v")))
    assert not seg.pixel_array.any()


def test_a_series_without_its_uids_gets_a_message_naming_them():
    uids = references()
    del uids["FrameOfReferenceUID"]
    data = series_zip(*stack(blob_volume(), *PLANES["axial"]), **uids)
    volume = read_volume(data, "anonymised.zip")
    with pytest.raises(InputError, match="no FrameOfReferenceUID"):
        mask_to_dicom_seg(volume.pixels > BLOB, volume, model_version="v")


def test_only_dicom_scans_get_a_seg():
    from helpers import SAMPLES

    volume = read_volume((SAMPLES / "TCGA_HT_8563_19981209_11.png").read_bytes(), "slice.png")
    with pytest.raises(InputError, match="only be made for a DICOM scan"):
        mask_to_dicom_seg(np.zeros(volume.shape, bool), volume, model_version="v")


def test_a_multiframe_file_whose_frames_differ_in_spacing_says_why_there_is_no_seg():
    from mriseg.data.dicom_seg import header, seg_problem

    data = enhanced_dicom(blob_volume(), *PLANES["axial"], **references())
    dataset = header(data)
    assert seg_problem([dataset]) is None
    dataset.PerFrameFunctionalGroupsSequence[3].PixelMeasuresSequence[0].PixelSpacing = [0.5, 0.5]
    assert seg_problem([dataset]) == "the frames of the multi-frame file differ in pixel spacing or orientation"
