"""Helpers for tests that drive the app through Streamlit's AppTest."""

from __future__ import annotations

from helpers import REPO_ROOT
from streamlit.testing.v1 import AppTest

from mriseg.app.webapp import sample_button_key
from mriseg.postprocessing import binarize

TIMEOUT = 120


def start() -> AppTest:
    at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    return at


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def expected_mask(segmenter, pixels, threshold):
    return binarize(segmenter.predict(pixels).mean, segmenter.postprocessing, threshold)


def open_sample(at: AppTest, image_name: str) -> AppTest:
    at.button(key=sample_button_key({"image": image_name})).click().run()
    assert not at.exception, at.exception
    return at


def upload(at: AppTest, key: str, name: str, data: bytes) -> AppTest:
    at.file_uploader(key=key).set_value((name, data, "application/octet-stream"))
    at.run()
    assert not at.exception, at.exception
    return at
