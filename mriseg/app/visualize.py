"""Pictures for people: display scaling, mask overlays, probability heat maps and error maps (RGB uint8)."""

from __future__ import annotations

import cv2
import numpy as np

from mriseg.preprocessing import RobustNormalize, darken_masked_background

COLOURS = {
    "red": (230, 50, 50),
    "yellow": (250, 220, 40),
    "cyan": (40, 220, 250),
    "green": (60, 220, 90),
    "magenta": (230, 60, 220),
}
# Error-map colours chosen to stay distinct for the common red-green colour blindness.
ERROR_COLOURS = {
    "true positive": (250, 220, 40),  # yellow
    "false positive": (230, 60, 220),  # magenta
    "false negative": (40, 180, 250),  # blue-cyan
}


def display_image(pixels: np.ndarray) -> np.ndarray:
    """A 2D slice scaled to uint8 the way the model sees it (a skull-stripped scan's background dark, head-percentile
    clipping), as gray RGB."""
    normalized = RobustNormalize()(darken_masked_background(np.asarray(pixels)[None])[0])
    low, high = float(normalized.min()), float(normalized.max())
    scaled = np.zeros_like(normalized) if high == low else (normalized - low) / (high - low)
    gray = (scaled * 255).round().astype(np.uint8)
    return np.stack([gray] * 3, axis=-1)


def overlay(image_rgb: np.ndarray, mask: np.ndarray, colour: str | tuple[int, int, int] = "red",
            opacity: float | None = None, style: str = "fill") -> np.ndarray:
    """Draw a mask on an image.

    Args:
        image_rgb: (H, W, 3) uint8.
        mask: (H, W) boolean.
        colour: a name from :data:`COLOURS` or an RGB triple.
        opacity: 0 (invisible) to 1 (solid); None: 0.45 for ``fill``, 1 (solid) for ``contour``.
        style: ``fill`` (translucent area) or ``contour`` (2-pixel outline).
    """
    if style not in ("fill", "contour"):
        raise ValueError(f"style must be 'fill' or 'contour', got {style!r}")
    if opacity is None:
        opacity = 0.45 if style == "fill" else 1.0
    rgb = np.array(COLOURS.get(colour, colour) if isinstance(colour, str) else colour, dtype=np.float32)
    out = image_rgb.copy()
    mask = np.asarray(mask, dtype=bool)
    if style == "contour":
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        outline = np.zeros(mask.shape, np.uint8)
        cv2.drawContours(outline, contours, -1, 1, thickness=2 if min(mask.shape) >= 128 else 1)
        mask = outline.astype(bool)
    out[mask] = ((1 - opacity) * out[mask] + opacity * rgb).round().astype(np.uint8)
    return out


def heatmap(probabilities: np.ndarray, image_rgb: np.ndarray | None = None, opacity: float = 0.6) -> np.ndarray:
    """Probabilities 0..1 in the inferno colour map, blended on the image where it is given."""
    coloured = cv2.applyColorMap((np.clip(probabilities, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    coloured = cv2.cvtColor(coloured, cv2.COLOR_BGR2RGB)
    if image_rgb is None:
        return coloured
    return (opacity * coloured + (1 - opacity) * image_rgb).round().astype(np.uint8)


def error_map(image_rgb: np.ndarray, prediction: np.ndarray, truth: np.ndarray, opacity: float = 0.7) -> np.ndarray:
    """True positives, false positives and false negatives in the :data:`ERROR_COLOURS`."""
    prediction, truth = np.asarray(prediction, bool), np.asarray(truth, bool)
    out = image_rgb.copy()
    for name, region in (("true positive", prediction & truth), ("false positive", prediction & ~truth),
                         ("false negative", ~prediction & truth)):
        colour = np.array(ERROR_COLOURS[name], dtype=np.float32)
        out[region] = ((1 - opacity) * out[region] + opacity * colour).round().astype(np.uint8)
    return out


def to_png(image_rgb: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("could not encode the image as PNG")
    return encoded.tobytes()


def near_threshold(probabilities: np.ndarray, threshold: float, margin: float = 0.1) -> np.ndarray:
    """Pixels whose decision would flip if the threshold moved by up to ``margin``."""
    return np.abs(np.asarray(probabilities) - threshold) <= margin


# Chart colours that read on the app's dark theme (.streamlit/config.toml): one colour per kind of quantity, the same
# on every page, so Dice is never confused with IoU, or a loss with a score. From the Okabe-Ito palette, which stays
# distinct for colour-blind readers; the threshold marker takes the theme's primary colour.
CHART_COLOURS = {
    "dice": "#56b4e9",  # sky blue
    "iou": "#cc79a7",  # reddish purple
    "loss": "#d55e00",  # vermillion (kept apart from the orange-yellow threshold)
    "area": "#009e73",  # bluish green
    "median": "#009e73",
    "threshold": "#f0b429",  # the theme's primary colour: the app's threshold everywhere
    "marker": "#d9d9d9",  # light grey: other vertical markers (restarts, best epoch)
}
# An ensemble's U-Nets, one shade each: losses in warm shades, validation Dice in cool ones, so a loss curve is
# never mistaken for a score whichever U-Net it belongs to.
MEMBER_LOSS_COLOURS = ("#d55e00", "#e69f00", "#ff9da7", "#f0e442")
MEMBER_DICE_COLOURS = ("#56b4e9", "#009e73", "#b39ddb", "#8dd3c7")
CHART_FONT_SIZE = 14
PRESENTER_CHART_FONT_SIZE = 20  # a projector's back row: nothing under 18 px


def style_chart(figure, presenter: bool = False):
    """A Plotly figure with text large enough to read from the back of a class (returned for chaining): ticks,
    legend, axis titles, text on the marks and the line labels of :func:`threshold_line` at one size, the title a
    little larger. Each is set on its own: Streamlit's chart theme sets ticks and axis titles over the layout's font.
    """
    size = PRESENTER_CHART_FONT_SIZE if presenter else CHART_FONT_SIZE
    figure.update_layout(font_size=size, title_font_size=round(size * 1.2), legend_font_size=size)
    figure.update_xaxes(tickfont_size=size, title_font_size=size)
    figure.update_yaxes(tickfont_size=size, title_font_size=size)
    figure.update_annotations(font_size=size)
    figure.update_traces(textfont_size=size, selector=lambda trace: "textfont" in trace)
    return figure


def threshold_line(figure, threshold: float, label: str, position: str = "bottom right",
                   colour: str = CHART_COLOURS["threshold"], dash: str = "dash"):
    """A vertical line at ``threshold`` in a colour that shows on the dark theme, its label in the same colour.

    Plotly's default line is black, invisible on a dark background. Returns the figure.
    """
    figure.add_vline(x=threshold, line_dash=dash, line_color=colour, line_width=2, annotation_text=label,
                     annotation_position=position, annotation_font=dict(color=colour, size=CHART_FONT_SIZE))
    return figure
