"""An overlay that follows the threshold in the browser, with no server round trip per move.

For every threshold step the post-processed mask of the whole volume is computed once (the same
:func:`~mriseg.postprocessing.binarize` the rest of mriseg uses, so what the browser draws is exactly the mask the
server measures). Per slice the 91 masks are packed as bits into one RGB PNG of four tiles side by side: step ``k``
lives in byte ``k // 8`` (bit ``7 - k % 8``, NumPy's ``packbits`` order), byte ``b`` in tile ``b // 3``, colour
channel ``b % 3``. A small Streamlit component (:data:`COMPONENT_JS`) decodes that picture once and redraws the
overlay on a canvas as the slider moves; the chosen value goes back to the server when the slider is released.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

import numpy as np

from mriseg.app.visualize import COLOURS, to_png
from mriseg.postprocessing import PostprocessingConfig, binarize, bounding_box

# The shared threshold's range and step (the sidebar slider offers the same values).
THRESHOLD_STEPS: tuple[float, ...] = tuple(round(0.05 + 0.01 * step, 2) for step in range(91))
CHANNELS = 3  # RGB only: in RGBA, a zero alpha would let the browser's premultiplied canvas wipe the other bytes


def step_of(threshold: float) -> int:
    """The index of the threshold step nearest ``threshold``.

    Example:
        >>> step_of(0.5), THRESHOLD_STEPS[step_of(0.5)]
        (45, 0.5)
    """
    return int(np.argmin(np.abs(np.asarray(THRESHOLD_STEPS) - threshold)))


# Bytes of bits per pixel for all the steps, and the W-wide tiles of a slice's picture that hold them.
STEP_BYTES = -(-len(THRESHOLD_STEPS) // 8)
TILES = -(-STEP_BYTES // CHANNELS)


@dataclass(frozen=True)
class ThresholdMasks:
    """Every threshold step's mask of a volume, packed as bits; a slice's picture for the browser is encoded the
    first time it is asked for (a volume's first overlay waits for one PNG, not for one per slice).

    Attributes:
        shape: (slices, H, W) of the volume.
        box: the slices, rows and columns outside which every step's mask is empty (None: all are empty).
        bits: (:data:`STEP_BYTES`, slices, rows, columns) of the box: step ``k`` is bit ``7 - k % 8`` of byte
            ``k // 8`` (NumPy's ``packbits`` order).
        slice_counts: (slices, steps) tumour pixels per slice at each step.
    """

    shape: tuple[int, int, int]
    box: tuple[slice, slice, slice] | None
    bits: np.ndarray
    slice_counts: np.ndarray
    _pngs: dict[int, bytes] = field(default_factory=dict, compare=False, repr=False)

    @property
    def tiles(self) -> int:
        return TILES

    @property
    def volume_counts(self) -> list[int]:
        """Tumour voxels of the whole volume at each step."""
        return self.slice_counts.sum(axis=0).astype(int).tolist()

    @property
    def nbytes(self) -> int:
        return self.bits.nbytes + self.slice_counts.nbytes + sum(map(len, self._pngs.values()))

    def slice_png(self, index: int) -> bytes:
        """Slice ``index``'s masks as an (H, W * tiles) RGB PNG (see the module docstring); encoded once."""
        png = self._pngs.get(index)
        if png is None:
            png = self._pngs.setdefault(index, to_png(self.slice_picture(index)))  # RGB in, RGB out: exact bytes
        return png

    def slice_picture(self, index: int) -> np.ndarray:
        """Slice ``index``'s masks as the (H, W * tiles, 3) picture the browser decodes."""
        packed = np.zeros((STEP_BYTES, *self.shape[1:]), np.uint8)
        if self.box is not None and self.box[0].start <= index < self.box[0].stop:
            packed[:, self.box[1], self.box[2]] = self.bits[:, index - self.box[0].start]
        return _picture(packed)


def _picture(packed: np.ndarray) -> np.ndarray:
    """(bytes, H, W) packed bits as an (H, W * tiles, 3) picture: byte ``b`` in tile ``b // 3``, channel ``b % 3``."""
    tiles = -(-len(packed) // CHANNELS)
    padded = np.zeros((tiles * CHANNELS, *packed.shape[1:]), np.uint8)
    padded[: len(packed)] = packed
    # (tiles, channels, H, W) -> (H, tiles, W, channels) -> (H, tiles * W, channels)
    picture = padded.reshape(tiles, CHANNELS, *packed.shape[1:]).transpose(2, 0, 3, 1)
    return np.ascontiguousarray(picture.reshape(packed.shape[1], -1, CHANNELS))


def pack_masks(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """(steps, H, W) boolean masks of one slice as an (H, W * tiles, 3) uint8 picture; returns it and ``tiles``.

    Example:
        >>> masks = np.zeros((91, 2, 2), bool); masks[:46, 0, 0] = True  # the top-left pixel up to step 45
        >>> picture, tiles = pack_masks(masks)
        >>> picture.shape, tiles, [bool(unpack_step(picture, tiles, k)[0, 0]) for k in (0, 45, 46)]
        ((2, 8, 3), 4, [True, True, False])
    """
    picture = _picture(np.packbits(masks, axis=0))
    return picture, picture.shape[1] // masks.shape[-1]


def unpack_step(picture: np.ndarray, tiles: int, step: int) -> np.ndarray:
    """The mask of threshold step ``step`` from a :func:`pack_masks` picture (what the browser does, in NumPy)."""
    width = picture.shape[1] // tiles
    byte = step // 8
    tile, channel = divmod(byte, CHANNELS)
    return (picture[:, tile * width : (tile + 1) * width, channel] >> (7 - step % 8)) & 1 == 1


def threshold_masks(probabilities: np.ndarray, postprocessing: PostprocessingConfig) -> ThresholdMasks:
    """Post-process ``probabilities`` (slices, H, W) at every threshold step and pack the masks as bits.

    Memory stays near the volume's own size whatever the input: each step's mask is packed into the bits of the
    box where the lowest step finds anything (every mask, holes filled, lies inside it) before the next step is
    computed, so a volume costs 12 bytes a voxel of that box, never one mask per step.
    """
    probabilities = np.asarray(probabilities)
    probabilities = probabilities.reshape(-1, *probabilities.shape[-2:])
    counts = np.zeros((len(probabilities), len(THRESHOLD_STEPS)), np.int64)
    box = bounding_box(probabilities >= THRESHOLD_STEPS[0], margin=0)
    if box is None:
        return ThresholdMasks(probabilities.shape, None, np.zeros((STEP_BYTES, 0, 0, 0), np.uint8), counts)
    bits = np.zeros((STEP_BYTES, *(part.stop - part.start for part in box)), np.uint8)
    for step, threshold in enumerate(THRESHOLD_STEPS):
        mask = binarize(probabilities, postprocessing, threshold)[box]
        bits[step // 8] |= mask.view(np.uint8) << (7 - step % 8)
        counts[box[0], step] = mask.sum(axis=(1, 2))
    return ThresholdMasks(probabilities.shape, box, bits, counts)


def slice_threshold_masks(probabilities: np.ndarray, index: int, n_slices: int,
                          postprocessing: PostprocessingConfig) -> ThresholdMasks:
    """Every step's mask of slice ``index`` alone (2D filters only), placed in an ``n_slices`` volume: the preview
    of a volume whose other slices are still being segmented.

    Example:
        >>> probabilities = np.zeros((64, 64), np.float32); probabilities[20:40, 20:40] = 0.9
        >>> masks = slice_threshold_masks(probabilities, 3, 5, PostprocessingConfig())
        >>> masks.shape, masks.slice_counts[:, 0].tolist()
        ((5, 64, 64), [0, 0, 0, 400, 0])
    """
    alone = threshold_masks(probabilities[None], postprocessing)
    counts = np.zeros((n_slices, len(THRESHOLD_STEPS)), np.int64)
    counts[index] = alone.slice_counts[0]
    box = None if alone.box is None else (slice(index, index + 1), *alone.box[1:])
    return ThresholdMasks((n_slices, *alone.shape[1:]), box, alone.bits, counts)


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


COMPONENT_CSS = """
.view {font-family: var(--st-font, sans-serif); color: var(--st-text-color, #fafafa);}
.pictures {display: flex; gap: 0.75rem; justify-content: center; align-items: flex-start;}
figure {margin: 0; flex: 1 1 0; min-width: 0; display: flex; flex-direction: column; align-items: center;}
figure canvas, figure img {display: block; width: 100%; height: auto; max-height: var(--picture-height, 60vh);
    object-fit: contain; border-radius: 0.25rem;}
figcaption {font-size: var(--caption-size, 0.95rem); opacity: 0.85; margin-top: 0.3rem; text-align: center;}
.controls {display: flex; align-items: center; gap: 1rem; margin-top: 0.6rem; flex-wrap: wrap;}
.controls label {font-size: var(--label-size, 1rem); white-space: nowrap;}
.controls input[type=range] {flex: 1 1 12rem; accent-color: var(--st-primary-color, #f0b429); min-width: 10rem;
    height: 1.6rem;}
.reading {font-size: var(--reading-size, 1.15rem); font-weight: 600; white-space: nowrap;}
"""

COMPONENT_HTML = """
<div class="view">
  <div class="pictures"></div>
  <div class="controls">
    <label for="threshold">Threshold <output class="value"></output></label>
    <input id="threshold" type="range" min="0" step="1">
    <span class="reading"></span>
  </div>
</div>
"""

# Draws the overlay for the slider's step from the decoded pictures: a fill blended at the chosen opacity, or an
# outline (mask pixels with a neighbour outside the mask, thickened by one pixel on pictures of 128 px and more,
# as the server's downloads draw it) at that opacity.
COMPONENT_JS = """
function decode(url) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => {
      const canvas = document.createElement('canvas');
      canvas.width = image.naturalWidth; canvas.height = image.naturalHeight;
      const context = canvas.getContext('2d', {willReadFrequently: true});
      context.drawImage(image, 0, 0);
      resolve(context.getImageData(0, 0, canvas.width, canvas.height));
    };
    image.onerror = reject;
    image.src = url;
  });
}

function maskOf(bits, width, height, tiles, step) {
  const byte = step >> 3, bit = 7 - (step & 7), tile = Math.floor(byte / 3), channel = byte % 3;
  const rowStride = width * tiles * 4, mask = new Uint8Array(width * height);
  for (let y = 0; y < height; y++) {
    let source = y * rowStride + tile * width * 4 + channel;
    for (let x = 0; x < width; x++, source += 4) mask[y * width + x] = (bits.data[source] >> bit) & 1;
  }
  return mask;
}

function outline(mask, width, height, thick) {
  const edge = new Uint8Array(width * height);
  for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) {
    const i = y * width + x;
    if (!mask[i]) continue;
    if (x === 0 || y === 0 || x === width - 1 || y === height - 1 || !mask[i - 1] || !mask[i + 1] ||
        !mask[i - width] || !mask[i + width]) edge[i] = 1;
  }
  if (!thick) return edge;
  const wide = edge.slice();
  for (let y = 1; y < height - 1; y++) for (let x = 1; x < width - 1; x++) {
    const i = y * width + x;
    if (edge[i]) { wide[i - 1] = wide[i + 1] = wide[i - width] = wide[i + width] = 1; }
  }
  return wide;
}

function formatNumber(value, digits) {
  return value.toLocaleString('en-US', {minimumFractionDigits: digits, maximumFractionDigits: digits});
}

// Decoded pictures and the slider's dealings with the server live in the module, not in the DOM: Streamlit may
// hand the function a freshly built element on a rerun, and the pictures must then be drawn at once, not decoded
// again (a flash of empty canvas each time the threshold reaches the server).
const decoded = new Map();
const sync = {awaiting: undefined, sentAt: 0, timer: null, local: null};

function picturesFor(data) {
  let entry = decoded.get(data.pictures_key);
  if (!entry) {
    entry = {};
    entry.ready = Promise.all([decode(data.image_url), decode(data.masks_url)]).then(([image, bits]) => {
      entry.image = image; entry.bits = bits;
    });
    decoded.set(data.pictures_key, entry);
    if (decoded.size > 12) decoded.delete(decoded.keys().next().value);  // oldest first
  }
  return entry;
}

function build(root, data) {
  const pictures = root.querySelector('.pictures');
  pictures.replaceChildren();
  const figure = (caption) => {
    const element = document.createElement('figure');
    const text = document.createElement('figcaption');
    text.textContent = caption;
    pictures.appendChild(element);
    return [element, text];
  };
  if (data.input_url) {
    const [element, text] = figure(data.input_caption);
    const image = document.createElement('img');
    image.src = data.input_url; image.alt = data.input_caption;
    element.append(image, text);
  }
  const [overlayFigure, overlayText] = figure('');
  const canvas = document.createElement('canvas');
  canvas.className = 'overlay';
  canvas.setAttribute('role', 'img');
  overlayFigure.append(canvas, overlayText);
  const [heatFigure, heatText] = figure(data.heat_caption);
  const heat = document.createElement('img');
  heat.src = data.heat_url; heat.alt = data.heat_caption;
  heatFigure.append(heat, heatText);
  root.dataset.picturesKey = data.pictures_key;
}

export default function (component) {
  const { data, parentElement, setStateValue } = component;
  const root = parentElement.querySelector('.view');
  const slider = root.querySelector('input');
  root.style.setProperty('--picture-height', data.picture_height);
  root.style.setProperty('--caption-size', data.caption_size);
  root.style.setProperty('--reading-size', data.reading_size);
  root.style.setProperty('--label-size', data.reading_size);
  if (root.dataset.picturesKey !== data.pictures_key) build(root, data);  // a new slice, case or element
  const entry = picturesFor(data);

  const draw = () => {
    if (!entry.image) return;
    const image = entry.image, bits = entry.bits;
    const step = Number(slider.value), threshold = data.steps[step];
    const width = image.width, height = image.height;
    const mask = maskOf(bits, width, height, data.tiles, step);
    const paint = data.style === 'contour' ? outline(mask, width, height, Math.min(width, height) >= 128) : mask;
    const out = new ImageData(new Uint8ClampedArray(image.data), width, height);
    const [r, g, b] = data.colour, a = data.opacity;
    for (let i = 0, p = 0; i < paint.length; i++, p += 4) {
      if (!paint[i]) continue;
      out.data[p] = Math.round((1 - a) * out.data[p] + a * r);
      out.data[p + 1] = Math.round((1 - a) * out.data[p + 1] + a * g);
      out.data[p + 2] = Math.round((1 - a) * out.data[p + 2] + a * b);
    }
    const canvas = root.querySelector('canvas.overlay');
    if (canvas.width !== width || canvas.height !== height) { canvas.width = width; canvas.height = height; }
    canvas.getContext('2d').putImageData(out, 0, 0);
    const text = threshold.toFixed(2);
    root.querySelector('.value').textContent = text;
    const caption = data.overlay_caption.replace('{threshold}', text);
    canvas.nextElementSibling.textContent = caption;
    canvas.setAttribute('aria-label', caption);
    const pixels = data.slice_counts[step];
    let words = formatNumber(pixels, 0) + ' px';
    if (data.pixel_area_mm2 !== null) words += ' · ' + formatNumber(pixels * data.pixel_area_mm2, 1) + ' mm²';
    if (data.volume_counts) {
      words += ' on this slice; all slices ';
      words += data.voxel_ml !== null ? formatNumber(data.volume_counts[step] * data.voxel_ml, 2) + ' mL'
                                      : formatNumber(data.volume_counts[step], 0) + ' px';
    }
    // A file unlike brain FLAIR: its outline is drawn for teaching, but its area is no measurement.
    root.querySelector('.reading').textContent = data.not_meaningful ? 'area not meaningful: ' + data.not_meaningful
                                                                     : words;
    canvas.dataset.threshold = text;  // for tests and the benchmark: what is on screen now
    canvas.dataset.preliminary = String(Boolean(data.preliminary));
    canvas.dataset.pixels = String(pixels);
    canvas.dataset.drawnAt = String(performance.now());
  };

  slider.max = String(data.steps.length - 1);
  // The server echoes each value sent; an echo of an older value (keys pressed faster than the page reruns)
  // must not pull the slider back, so while a value is on its way or the user is still moving, the server's
  // value is not applied. Any other server value (the sidebar, a reload) moves the slider.
  if (sync.awaiting !== undefined && (data.step === sync.awaiting || performance.now() - sync.sentAt > 4000)) {
    sync.awaiting = undefined;
  }
  slider.value = String(sync.awaiting !== undefined || sync.timer ? sync.local : data.step);
  slider.setAttribute('aria-label', 'Threshold');
  slider.oninput = () => { sync.local = Number(slider.value); draw(); };
  slider.onchange = () => {
    clearTimeout(sync.timer);
    sync.timer = setTimeout(() => {  // one rerun for a burst of key presses or a drag
      sync.timer = null;
      const step = Number(slider.value);
      if (step === data.step && sync.awaiting === undefined) return;
      sync.awaiting = step; sync.sentAt = performance.now();
      setStateValue('threshold', data.steps[step]);
    }, 250);
  };
  if (entry.image) draw(); else entry.ready.then(draw);
}
"""


def overlay_colour(colour: str | tuple[int, int, int]) -> list[int]:
    return list(COLOURS.get(colour, colour) if isinstance(colour, str) else colour)
