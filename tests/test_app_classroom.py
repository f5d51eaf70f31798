"""Classroom features through AppTest: How it works, uncertainty, threshold lesson, presenter mode, volumes."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from app_helpers import expected_mask, metric, open_sample, start
from helpers import REPO_ROOT
from streamlit.testing.v1 import AppTest

from mriseg.app.case import load_sample, sample_index
from mriseg.app.explain import describe
from mriseg.app.visualize import near_threshold
from mriseg.metrics import dice
from mriseg.model import unet_grid, unet_members
from mriseg.postprocessing import binarize

pytestmark = pytest.mark.slow


def image_captions(at) -> list[str]:
    return [caption for image in at.get("image") for caption in image.captions]


def entry_of(category: str) -> dict:
    return max((e for e in sample_index() if e["category"] == category), key=lambda e: e["tumour_pixels"])


def test_how_it_works_draws_the_loaded_model(segmenter):
    at = open_sample(start(), entry_of("large")["image"])
    at.switch_page("pages/how_it_works.py").run()
    assert not at.exception, at.exception
    grid = unet_grid(segmenter.model, 0, segmenter.preprocessor.config.grid_size)
    stages = describe(unet_members(segmenter.model)[0], grid)
    table = at.dataframe[0].value
    assert list(table["stage"]) == [s.name for s in stages]
    assert list(table["parameters"]) == [s.parameters for s in stages]
    assert at.get("graphviz_chart")

    shown = [m.value for m in at.markdown if re.match(r"\*\*.+\*\*: \d+ channels", m.value)]
    decoder_1 = next(s for s in stages if s.name == "decoder 1")
    expected = f"{decoder_1.out_channels} channels of {decoder_1.side}x{decoder_1.side}"
    assert len(shown) == 3 and all(expected in text for text in shown)  # up-sampled, skip, merged

    at.selectbox(key="feature_stage").set_value("encoder 3").run()
    encoder_3 = next(s for s in stages if s.name == "encoder 3")
    shown = [m.value for m in at.markdown if re.match(r"\*\*.+\*\*: \d+ channels", m.value)]
    assert shown == [f"**output**: {encoder_3.out_channels} channels of {encoder_3.side}x{encoder_3.side}"]
    assert any("cross-entropy" in m.value for m in at.markdown)
    # the shipped U-Net's last stages used --dice-per-slice and volume normalisation: the page reads its config
    assert any("on each slice with tumour" in m.value for m in at.markdown)
    assert any("z-scored over the head **in the whole scan**" in m.value for m in at.markdown)
    assert not [r for r in at.radio if r.key == "ensemble_member"]  # one U-Net: nothing to choose


def test_uncertainty_toggle_shows_disagreement_and_near_threshold_pixels(segmenter):
    entry = entry_of("medium")
    at = open_sample(start(), entry["image"])
    assert not any("Where the model is unsure" in m.value for m in at.markdown)
    at.toggle(key="tta").set_value(True).run()
    assert not at.exception, at.exception
    assert any("Where the model is unsure" in m.value for m in at.markdown)
    threshold = at.slider(key="threshold").value
    probabilities = segmenter.predict(load_sample(entry).volume.pixels, tta=True).mean
    flips = int(near_threshold(probabilities[0], threshold).sum())
    captions = image_captions(at)
    assert f"{flips:,} pixels within ±0.1 of the threshold (cyan): a small move of the slider flips them" in captions
    assert "Disagreement between the two views: |original − mirrored|" in captions


def test_threshold_lesson_steps_and_counts(segmenter):
    entry = entry_of("large")
    at = open_sample(start(), entry["image"])
    at.slider(key="threshold").set_value(0.5).run()
    at.switch_page("pages/compare.py").run()
    assert at.select_slider(key="lesson_threshold").value == pytest.approx(0.50)  # starts at the app's threshold
    at.button(key="lesson_lower").click().run()
    assert at.select_slider(key="lesson_threshold").value == pytest.approx(0.45)
    case = load_sample(entry)
    probabilities = segmenter.predict(case.volume.pixels).mean
    lesson = binarize(probabilities, segmenter.postprocessing, 0.45)
    assert metric(at, "False positives") == f"{int((lesson & ~case.truth).sum()):,} px"
    assert metric(at, "False negatives") == f"{int((~lesson & case.truth).sum()):,} px"
    dices = [m.value for m in at.metric if m.label == "Dice"]
    assert f"{dice(lesson, case.truth):.3f}" in dices


def test_presenter_mode_next_sample_other_pages_and_exit(segmenter):
    """Presenter mode: next sample, the one number for the back row, the threshold on pages without their own
    threshold view, and the way back."""
    entries = sample_index()
    at = open_sample(start(), entries[0]["image"])
    at.button[next(i for i, b in enumerate(at.button) if b.label == "Presenter mode")].click().run()
    assert not at.exception, at.exception
    assert not [s for s in at.slider if s.key == "presenter_threshold"]  # the Segment page has its own, in view
    at.button[next(i for i, b in enumerate(at.button) if b.label == "Next sample")].click().run()
    assert any(f'class="case-name" title="{entries[1]["image"]}"' in html.proto.body for html in at.get("html"))
    case = load_sample(entries[1])
    expected = int(expected_mask(segmenter, case.volume.pixels, at.slider(key="threshold").value).sum())
    assert [m.value for m in at.metric] == [f"{expected:,} px"]  # one number, large
    at.switch_page("pages/compare.py").run()
    assert at.slider(key="presenter_threshold").value == at.slider(key="threshold").value
    at.slider(key="presenter_threshold").set_value(0.7).run()
    assert at.slider(key="threshold").value == pytest.approx(0.7)  # one threshold for every page and mode
    at.button[next(i for i, b in enumerate(at.button) if b.label.startswith("Exit presenter mode"))].click().run()
    assert not [s for s in at.slider if s.key == "presenter_threshold"]


def test_volume_viewer_starts_on_the_tumour_of_the_slice_shown_and_slice_chart(segmenter):
    from mriseg.app.threshold_view import step_of

    entry = entry_of("volume")
    at = open_sample(start(), entry["image"])
    case = load_sample(entry)
    threshold = at.slider(key="threshold").value
    mask = expected_mask(segmenter, case.volume.pixels, threshold)
    index = at.slider(key="slice").value - 1
    rows, columns = np.nonzero(mask[index])
    viewer = next(element for element in at.get("bidi_component")
                  if element.proto.component_name == "mriseg.volume_viewer")
    data = json.loads(viewer.proto.json)
    _, height, width = mask.shape
    # RAS voxel order: x from the image's right edge, y from its bottom, z the slice.
    assert data["crosshair"] == [width - 1 - int(np.median(columns)), height - 1 - int(np.median(rows)), index]
    assert data["step"] == step_of(threshold)
    assert data["scan_url"] != data["overlay_url"] and data["scan_url"].endswith(".gz")  # media files, not data
    chart = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert chart["data"][0]["y"] == mask.reshape(len(mask), -1).sum(axis=1).tolist()


def serve_from_hub_cache(folder, tmp_path, monkeypatch) -> AppTest:
    """The app, run once, with ``folder`` published as the configured Hub repo in a hand-built offline HF cache."""
    from huggingface_hub import constants
    from test_weights import COMMIT, REPO, build_hf_cache

    from mriseg.app import webapp

    cache = tmp_path / "hub"
    build_hf_cache(cache, [folder / name for name in ("config.json", "model.safetensors", "training_log.csv",
                                                      "evaluation.json")])
    monkeypatch.setenv("MRISEG_HF_REPO", REPO)
    monkeypatch.setenv("MRISEG_HF_REVISION", COMMIT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    webapp.load_model.clear()
    at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=120)
    at.run()
    return at


def single_unet_from_shipped(folder):
    """A copy of the shipped weights folder (one U-Net, with its recipe, training log and evaluation report)."""
    shutil.copytree(REPO_ROOT / "weights", folder)
    return folder


def test_staged_weights_from_the_hub_cache_show_their_history(tmp_path, monkeypatch, slice_samples):
    """Weights from a (hand-built, offline) HF cache that were warm-restarted, averaged and tuned with TTA:
    the training curves mark the restart and the averaged epochs, and the uncertainty toggle starts on."""
    from test_weights import REPO

    from mriseg.app import webapp

    staged = single_unet_from_shipped(tmp_path / "staged")
    config = json.loads((staged / "config.json").read_text())
    config.update(initialised_from={"training": config["training"], "best_epoch": 20}, averaged_epochs=[30, 31, 32],
                  tta_default=True)
    config.pop("best_epoch", None)
    (staged / "config.json").write_text(json.dumps(config))
    try:
        at = serve_from_hub_cache(staged, tmp_path, monkeypatch)
        assert at.toggle(key="tta").value is True
        assert any("hf-cache" in c.value or REPO in c.value for c in at.caption), [c.value for c in at.caption]
        open_sample(at, slice_samples[0]["image"])
        at.switch_page("pages/metrics.py").run()
        assert not at.exception, at.exception
        curves = next(chart for chart in at.get("plotly_chart") if "Training curves" in chart.proto.spec)
        assert "warm restart" in curves.proto.spec and "weights of epochs 30-32 averaged" in curves.proto.spec
    finally:
        webapp.load_model.clear()
