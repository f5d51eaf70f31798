"""Does a file look like what the model knows? Plain-language warnings for inputs unlike brain FLAIR MRI.

The U-Net learnt from axial brain FLAIR slices only. Given a colour photograph, a CT scan or a knee it still draws an
outline, and a meaningless outline looks as confident as a real one. :func:`check_input` looks at a decoded file
with a few signals that can each be explained in one sentence, and returns one sentence per reason for doubt. No
warning means that nothing looked wrong, not that the file is FLAIR: T1 or T2 brain MRI, for one, passes.

The signals, the kind of file first:

- colour: a raster file whose pixels carry real colour (MRI is grey; a Kaggle LGG TIFF, whose three channels are
  three MR sequences, is exempt);
- modality: a DICOM header naming another modality than MR (CT, X-ray, ultrasound, PET ...);
- Hounsfield units: many values below -500, those of air in CT; MRI, even z-scored, has none;

then, for a file of no other kind, what it shows, on the slice showing most of the scanned object:

- shape: an object far longer than wide, or running off two opposite edges of the image while longer than wide (a
  limb, a spine), or a picture filling its frame (a photograph), is not an axial head on its dark background;

and on any file, on up to 16 slices spread through it:

- burned-in marks: a bright stroke of one exact value with a sharp edge, as text drawn onto an image leaves; MRI
  has noise everywhere, and a window clipping bright fat leaves blobs that fade into the tissue around them.

The shape signals judge only a clear object: one covering a tenth of the slice, standing out from the background
noise, and textured like anatomy rather than like noise. The slices at the top and bottom of a head (a bit of
scalp, a head cut by the field of view, a rectangle of scanner noise) are too little to judge. Every threshold
leaves all 3,241 non-empty slices of the 90 LGG FLAIR patients without a warning: skull on, under a display window
saturating their brightest 1 %, skull-stripped, and z-scored (float, on both sides of a zero background, as BraTS
delivers brains), and so each patient's volume; ``tests/test_input_check.py`` checks every third slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

from mriseg.data.io import Volume

MODEL_KNOWS = "The model only knows brain FLAIR MRI, so treat the outline as meaningless."

# Colour: a picture is colour when this share of its pixels is coloured (``mriseg.data.io.colour_share``).
COLOUR_PIXEL_SHARE = 0.05

# Hounsfield units: CT air is -1000; below -500 lie air and lung, and no MRI value.
CT_AIR_HU = -500.0
CT_AIR_SHARE = 0.05

# The object: pixels differing from the background (the commonest intensity) by more than half the Otsu level of
# the smoothed difference, cleaned, with holes filled (ventricles and dark CSF are inside the head).
SMOOTHING_PX = 2.0
# Judged only when it covers this share of the slice, its edge stands this far above the background noise, and the
# spread of intensities inside it this far above its own pixel noise (anatomy: tens; a field of noise: 3 to 16).
MIN_OBJECT_SHARE = 0.10
MIN_CONTRAST_TO_NOISE = 5.0
MIN_TEXTURE_TO_NOISE = 20.0
# Length over width: an axial head is about 1.3 (up to 3 where the field of view cuts a cap off the top or bottom
# of the head, and skull stripping thins it); a limb or a spine inside the frame is longer still.
MAX_ELONGATION = 3.2
# A head lies inside the field of view; a limb or a spine runs off two opposite edges (over this share of each),
# and is longer than wide where a head cropped to the frame is round.
CROSSING_EDGE_SHARE = 0.1
MAX_CROSSING_ELONGATION = 1.6
# A scan shows its object on a dark background; a photograph fills its frame edge to edge.
MAX_FRAME_SHARE = 0.5
MAX_FRAME_OBJECT_SHARE = 0.6

# Burned-in marks: pixels whose 3x3 neighbourhood holds one exact value, brighter than the object level, in a patch
# of this many pixels or more, not touching the image's edge (padding does), a stroke rather than a blob, whose
# value drops by this share of its height over the background within 2 pixels (a clipped bright blob fades).
MIN_FLAT_PIXELS = 60
MIN_STROKE_ASPECT = 6  # length over width; a stroke's area is length x width = 2 x aspect x half-width²
MIN_STEP = 0.45
FLAT_CHECKED_SLICES = 16

DICOM_MODALITIES = {
    "CT": "a CT scan", "PT": "a PET scan", "NM": "a nuclear medicine scan", "US": "an ultrasound image",
    "CR": "an X-ray", "DX": "an X-ray", "MG": "a mammogram", "XA": "an X-ray angiogram", "RF": "a fluoroscopy image",
    "OT": "an image of another kind", "SC": "a screen capture",
}


@dataclass(frozen=True)
class SliceShape:
    """What the shape and mark signals measure on one slice.

    Attributes:
        object_share: share of the slice covered by the largest object.
        contrast_to_noise: the level separating object from background over the background's pixel noise.
        texture_to_noise: spread of intensities inside the object (10th to 90th percentile) over its pixel noise.
        elongation: length over width of the object's convex hull (from its second moments).
        frame_share: share of the image's edge pixels that the object covers.
        crossing: the object's share of the image's top and bottom edges (the smaller of the two), or of its left
            and right edges, whichever is larger: how far it runs off the image on two opposite sides.
        flat_pixels: the largest burned-in-looking patch (0 when none).
    """

    object_share: float
    contrast_to_noise: float
    texture_to_noise: float
    elongation: float
    frame_share: float
    crossing: float
    flat_pixels: int

    @property
    def judged(self) -> bool:
        """Whether the object is clear enough for the shape signals: large, distinct, and textured like anatomy."""
        return (self.object_share >= MIN_OBJECT_SHARE and self.contrast_to_noise >= MIN_CONTRAST_TO_NOISE
                and self.texture_to_noise >= MIN_TEXTURE_TO_NOISE)


def check_input(volume: Volume) -> list[str]:
    """Warnings, one sentence each, for a decoded file that does not look like brain FLAIR MRI; [] when none.

    Args:
        volume: the file as :func:`mriseg.data.io.read_volume` decoded it; its ``source`` keeps what decoding drops
            (a raster file's colour, a DICOM header's modality).

    Example:
        >>> yy, xx = np.mgrid[:128, :128]
        >>> limb = np.abs(xx - 64) < 20  # a leg running from the top of the image to the bottom
        >>> tissue = 100 + ndimage.gaussian_filter(np.random.default_rng(0).normal(0, 400, (128, 128)), 2)
        >>> check_input(Volume(np.where(limb, tissue, 0)[None].astype(np.float32)))[0][:48]
        'This does not look like an axial head slice: the'
    """
    warnings = _colour_warnings(volume) + _modality_warnings(volume)
    pixels = volume.pixels
    air = float(np.mean(pixels < CT_AIR_HU))
    if air >= CT_AIR_SHARE:
        warnings.append(f"This looks like a CT scan: {air:.0%} of its values are below {CT_AIR_HU:.0f}, as air is in "
                        f"Hounsfield units, and MRI has no such values. {MODEL_KNOWS}")
    fullest = _fullest_slice(pixels)
    shape = slice_shape(pixels[fullest])
    if not warnings:  # the kind of file already says why; its shape would only say it again
        warnings += _shape_warnings(shape)
    spread = np.linspace(0, len(pixels) - 1, min(len(pixels), FLAT_CHECKED_SLICES)).round().astype(int)
    shapes = [shape] + [slice_shape(pixels[index]) for index in sorted(set(spread) - {fullest})]
    # Only over a clear object: clipping a slice of noise by its own brightest pixels leaves flat specks.
    flat = max(other.flat_pixels if other.judged else 0 for other in shapes)
    if flat:
        warnings.append(f"Part of this image is a bright stroke of one exact value ({flat} pixels), like text or a "
                        "marker burned into a picture, where MRI has noise everywhere. The model may outline it as "
                        "tumour: use the scan without annotations.")
    return warnings


def _shape_warnings(shape: SliceShape) -> list[str]:
    """At most one sentence on why the object is not an axial head; none when it is too unclear to judge."""
    if not shape.judged:
        return []
    not_a_head = ("This does not look like an axial head slice: the object in it is {:.1f} times as long as wide"
                  "{}, where a head is an oval (about 1.3 to 1) inside the field of view. " + MODEL_KNOWS)
    if shape.crossing >= CROSSING_EDGE_SHARE and shape.elongation >= MAX_CROSSING_ELONGATION:
        return [not_a_head.format(shape.elongation, " and runs off two opposite edges of the image, as a limb or a "
                                                    "spine does")]
    if shape.elongation > MAX_ELONGATION:
        return [not_a_head.format(shape.elongation, "")]
    if shape.frame_share > MAX_FRAME_SHARE and shape.object_share > MAX_FRAME_OBJECT_SHARE:
        return ["This does not look like a scan: the picture fills its frame to the edges, where an MRI slice shows "
                f"the head on a dark background. {MODEL_KNOWS}"]
    return []


def slice_shape(image: np.ndarray) -> SliceShape:
    """The shape measurements of one (H, W) slice (see :class:`SliceShape`)."""
    image = np.asarray(image, dtype=np.float32)
    background = _background(image)
    square = np.ones((3, 3), np.uint8)
    flat = cv2.dilate(image, square) == cv2.erode(image, square)
    mask, level = _object_mask(image, background, flat)
    flat_pixels = _burned_in_patch(image, flat, background, level)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count < 2:
        return SliceShape(0.0, 0.0, 0.0, 1.0, 0.0, 0.0, flat_pixels)
    body = labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    outside = cv2.erode((~mask).astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    background_noise = _noise(image, outside) if outside.sum() >= 50 else 0.0
    contrast = level / background_noise if background_noise > 0 else float("inf")
    top, bottom, left, right = body[0].mean(), body[-1].mean(), body[:, 0].mean(), body[:, -1].mean()
    edges = np.concatenate([body[0], body[-1], body[1:-1, 0], body[1:-1, -1]])
    return SliceShape(float(body.mean()), float(contrast), _texture_to_noise(image, body), _elongation(body),
                      float(edges.mean()), float(max(min(top, bottom), min(left, right))), flat_pixels)


def _background(image: np.ndarray) -> float:
    """The commonest intensity (air around a head, the zero around a stripped brain), from a 128-bin histogram."""
    low, high = np.percentile(image, [0.5, 99.5])
    if high <= low:
        return float(low)
    counts, edges = np.histogram(image, bins=128, range=(low, high))
    peak = int(np.argmax(counts))
    return float(np.median(image[(image >= edges[peak]) & (image <= edges[peak + 1])]))


def _object_mask(image: np.ndarray, background: float, flat: np.ndarray) -> tuple[np.ndarray, float]:
    """Pixels of the scanned object, and the (smoothed) distance from the background that makes a pixel one.

    The distance, not the intensity: a z-scored brain lies on both sides of its zero background. Perfectly flat
    pixels count as background whatever their value: zero padding around a resampled slice is not anatomy.
    """
    distance = cv2.GaussianBlur(np.where(flat, 0, np.abs(image - background)), (0, 0), SMOOTHING_PX)
    level = 0.5 * _otsu(distance)
    mask = (distance > level).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    # Closed across dark gaps (a skull base open to the neck) before the holes are filled; padded so the closing
    # neither grows from nor sticks to the image's edge.
    pad = 6
    closed = cv2.morphologyEx(np.pad(mask, pad), cv2.MORPH_CLOSE,
                              cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (11, 11)))[pad:-pad, pad:-pad]
    return ndimage.binary_fill_holes(closed), level


def _otsu(values: np.ndarray) -> float:
    """Otsu's threshold of float values (256 bins)."""
    counts, edges = np.histogram(values, bins=256)
    centres = (edges[:-1] + edges[1:]) / 2
    below = np.cumsum(counts)
    above = below[-1] - below
    mass = np.cumsum(counts * centres)
    mean_below = mass / np.maximum(below, 1)
    mean_above = (mass[-1] - mass) / np.maximum(above, 1)
    return float(centres[np.argmax(below * above * (mean_below - mean_above) ** 2)])


def _noise(image: np.ndarray, where: np.ndarray) -> float:
    """Standard deviation of the pixel noise over ``where`` (Immerkaer's Laplacian estimate)."""
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    laplacian = np.abs(cv2.filter2D(image, cv2.CV_32F, kernel, borderType=cv2.BORDER_REFLECT))
    return float(np.sqrt(np.pi / 2) * np.mean(laplacian[where]) / 6)


def _texture_to_noise(image: np.ndarray, body: np.ndarray) -> float:
    """Spread of intensities inside the object (10th to 90th percentile) over its pixel noise.

    Anatomy is texture on a scale of several pixels and scores in the tens; a rectangle of scanner noise, as at
    the top of some LGG volumes, scores about 2.6.
    """
    inner = cv2.erode(body.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    if inner.sum() < 50:
        return 0.0
    noise = _noise(image, inner)
    low, high = np.percentile(image[inner], [10, 90])
    if noise <= 0:  # a perfectly smooth object: drawn, not scanned
        return float("inf") if high > low else 0.0
    return float((high - low) / noise)


def _elongation(body: np.ndarray) -> float:
    """Length over width of the convex hull: the square root of its second moments' eigenvalue ratio."""
    contours, _ = cv2.findContours(body.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = cv2.convexHull(max(contours, key=cv2.contourArea))
    moments = cv2.moments(hull)
    if moments["m00"] <= 0:
        return 1.0
    covariance = np.array([[moments["mu20"], moments["mu11"]], [moments["mu11"], moments["mu02"]]]) / moments["m00"]
    smallest, largest = np.linalg.eigvalsh(covariance)
    return float(np.sqrt(largest / smallest)) if smallest > 0 else float("inf")


def _burned_in_patch(image: np.ndarray, flat: np.ndarray, background: float, level: float) -> int:
    """Pixels of the largest flat patch that looks drawn on: bright, inside the frame, with a sharp step down.

    Saturation (a window clipping bright fat) is flat too, but the tissue around it is nearly as bright; padding
    reaches the image's edge.
    """
    candidates = (flat & (image - background > level)).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(candidates, connectivity=8)
    height, width = image.shape
    largest = 0
    for label in range(1, count):
        x, y, w, h, area = stats[label]
        if area < MIN_FLAT_PIXELS or area <= largest or x == 0 or y == 0 or x + w == width or y + h == height:
            continue
        patch = labels == label
        half_width = float(cv2.distanceTransform(np.pad(patch, 1).astype(np.uint8), cv2.DIST_L2, 3).max())
        if area < 2 * MIN_STROKE_ASPECT * half_width**2:
            continue  # compact: a saturated blob, not a stroke
        near = cv2.dilate(patch.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        ring = cv2.dilate(patch.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & ~near
        value = float(image[patch][0])
        if value - float(np.median(image[ring])) >= MIN_STEP * (value - background):
            largest = int(area)
    return largest


def _fullest_slice(pixels: np.ndarray) -> int:
    """The slice showing most of the object (a volume's middle slices; a head's widest one)."""
    if len(pixels) == 1:
        return 0
    background = _background(pixels[:: max(1, len(pixels) // 16)])
    return int(np.argmax([np.abs(image - background).sum() for image in pixels]))  # a slice at a time: less memory


def _colour_warnings(volume: Volume) -> list[str]:
    """A raster file with real colour (a photograph, a screenshot), from its first page."""
    source = volume.source
    if source.get("flair_channel_taken"):
        return []  # a Kaggle LGG TIFF, whose channels are three MR sequences
    share = source.get("colour_share", 0.0)
    if share < COLOUR_PIXEL_SHARE:
        return []
    return [f"This looks like a colour photograph, not an MRI slice: {share:.0%} of its pixels are coloured, where "
            f"MRI is grey. {MODEL_KNOWS}"]


def _modality_warnings(volume: Volume) -> list[str]:
    """A DICOM header naming another modality than MR."""
    modality = volume.source.get("modality")
    if not modality or modality == "MR":
        return []
    kind = DICOM_MODALITIES.get(modality, "not an MR scan")
    return [f"The DICOM header says this is {kind} (Modality {modality}), not MRI. {MODEL_KNOWS}"]
