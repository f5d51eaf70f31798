import numpy as np
import pytest
from helpers import DARK_BACKGROUND, contrast

from mriseg.app.visualize import (
    CHART_COLOURS,
    COLOURS,
    ERROR_COLOURS,
    MEMBER_DICE_COLOURS,
    MEMBER_LOSS_COLOURS,
    display_image,
    error_map,
    heatmap,
    overlay,
    style_chart,
    threshold_line,
    to_png,
)


def gray(size=64):
    return np.full((size, size, 3), 100, np.uint8)


def test_display_image_is_rgb_uint8_full_range():
    image = display_image(np.random.default_rng(0).random((50, 60)).astype(np.float32) * 4000)
    assert image.shape == (50, 60, 3) and image.dtype == np.uint8
    assert image.min() == 0 and image.max() == 255


def test_fill_overlay_tints_only_the_mask():
    mask = np.zeros((64, 64), bool)
    mask[10:20, 10:20] = True
    out = overlay(gray(), mask, "red", opacity=0.5)
    assert (out[~mask] == 100).all()
    assert out[15, 15, 0] > 150 and out[15, 15, 1] < 100


def test_contour_overlay_draws_the_outline_only():
    mask = np.zeros((256, 256), bool)
    mask[50:150, 50:150] = True
    out = overlay(np.full((256, 256, 3), 100, np.uint8), mask, "green", style="contour")
    assert (out[100, 100] == 100).all()  # inside untouched
    assert (out[50, 100] != 100).any()  # edge coloured
    assert tuple(out[50, 100]) == COLOURS["green"]  # solid by default
    with pytest.raises(ValueError, match="style"):
        overlay(gray(), mask[:64, :64], style="dots")


def test_contour_follows_the_opacity_it_is_given():
    mask = np.zeros((256, 256), bool)
    mask[50:150, 50:150] = True
    faint = overlay(np.full((256, 256, 3), 100, np.uint8), mask, "green", opacity=0.3, style="contour")
    expected = np.round(0.7 * 100 + 0.3 * np.array(COLOURS["green"])).astype(np.uint8)
    assert (faint[50, 100] == expected).all()


def test_error_map_colours_each_kind():
    prediction = np.zeros((64, 64), bool)
    truth = np.zeros((64, 64), bool)
    prediction[0:10, 0:20] = True
    truth[0:10, 10:30] = True
    out = error_map(gray(), prediction, truth, opacity=1.0)
    assert tuple(out[5, 15]) == ERROR_COLOURS["true positive"]
    assert tuple(out[5, 5]) == ERROR_COLOURS["false positive"]
    assert tuple(out[5, 25]) == ERROR_COLOURS["false negative"]
    assert tuple(out[40, 40]) == (100, 100, 100)


def test_heatmap_and_png():
    probabilities = np.linspace(0, 1, 64 * 64).reshape(64, 64)
    coloured = heatmap(probabilities)
    assert coloured.shape == (64, 64, 3)
    assert coloured[0, 0].sum() < coloured[-1, -1].sum()  # dark for 0, bright for 1
    assert to_png(coloured)[:8] == b"\x89PNG\r\n\x1a\n"


def test_z_scored_stripped_slice_shows_a_dark_background():
    brain = np.zeros((64, 64), np.float32)
    brain[16:48, 16:48] = np.random.default_rng(0).normal(0, 1, (32, 32))
    shown = display_image(brain)[..., 0]
    assert shown[0, 0] == shown.min() and shown[16:48, 16:48].mean() > shown[0, 0] + 50


def test_chart_colours_read_on_the_dark_theme_and_stay_apart():
    for name, colour in CHART_COLOURS.items():
        assert contrast(colour, DARK_BACKGROUND) >= 4.5, name  # WCAG AA for text, ample for lines
    for colour in MEMBER_LOSS_COLOURS + MEMBER_DICE_COLOURS:
        assert contrast(colour, DARK_BACKGROUND) >= 4.5, colour
    # quantities drawn on one chart never share a colour
    assert len({CHART_COLOURS[name] for name in ("dice", "iou", "loss", "threshold", "marker")}) == 5
    assert not set(MEMBER_LOSS_COLOURS) & set(MEMBER_DICE_COLOURS)


def test_threshold_line_is_visible_and_labelled_in_its_colour():
    import plotly.graph_objects as go

    figure = style_chart(threshold_line(go.Figure(go.Scatter(x=[0, 1], y=[0, 1])), 0.5, "current 0.50"))
    line = figure.layout.shapes[0]
    assert line.x0 == 0.5 and line.line.color == CHART_COLOURS["threshold"]  # plotly's default is black
    annotation = figure.layout.annotations[0]
    assert annotation.text == "current 0.50" and annotation.font.color == CHART_COLOURS["threshold"]
    assert figure.layout.font.size >= 14
