"""The app with weights it cannot trust, and behind a class password: a clear message on the page, never
Streamlit's generic error box, and no page for a visitor without the password."""

from __future__ import annotations

import json
import logging

import pytest
from app_helpers import TIMEOUT, open_sample, start
from helpers import REPO_ROOT
from streamlit.testing.v1 import AppTest
from test_weights import copy_of_shipped

from mriseg import config as mriseg_config
from mriseg.app import webapp
from mriseg.weights.bundle import fingerprint_of, model_version, read_config

pytestmark = pytest.mark.slow


@pytest.fixture
def fresh_model():
    """load_model is cached for the process: each test loads its own weights, and leaves none behind."""
    webapp.load_model.clear()
    yield
    webapp.load_model.clear()


def corrupt(folder):
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-100] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(data))
    return folder


def resealed(folder):
    """As a re-export leaves it: the config's fingerprint recomputed after its settings changed."""
    config = read_config(folder)
    config["fingerprint_sha256"] = fingerprint_of(config)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def run_app() -> AppTest:
    at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    return at


def test_corrupt_bundled_weights_give_a_clear_message_not_the_error_box(tmp_path, monkeypatch, fresh_model):
    monkeypatch.setattr(mriseg_config, "BUNDLED_WEIGHTS", corrupt(copy_of_shipped(tmp_path / "weights")))
    at = run_app()
    [message] = [error.value for error in at.error]
    assert message.startswith("The model cannot be loaded, so the app cannot segment anything: ")
    assert "model.safetensors does not match the sha256" in message and "Download the weights again" in message
    assert not [b for b in at.button if b.key and b.key.startswith("sample-")]  # no gallery without a model


def test_an_unexpected_failure_is_one_line_on_the_page(tmp_path, monkeypatch, fresh_model, caplog):
    """A config that passes its checks but describes an impossible network (a width written as text)."""
    folder = copy_of_shipped(tmp_path / "weights")
    config = read_config(folder)
    (folder / "config.json").write_text(
        json.dumps({**config, "architecture": {**config["architecture"], "base_width": "16"}}))
    monkeypatch.setattr(mriseg_config, "BUNDLED_WEIGHTS", resealed(folder))
    at = run_app()
    [message] = [error.value for error in at.error]
    assert message.startswith("The model cannot be loaded, so the app cannot segment anything (TypeError: ")
    assert "server's log" in message and "Traceback" not in message
    assert any(record.exc_info and record.name == "mriseg" for record in caplog.records)


def test_a_page_that_fails_shows_the_message_and_keeps_the_sidebar(tmp_path, monkeypatch, fresh_model,
                                                                   slice_samples):
    """Weights whose preprocessing cannot work (a grid of 0 pixels) load; segmenting a sample then fails."""
    folder = copy_of_shipped(tmp_path / "weights")
    config = read_config(folder)
    (folder / "config.json").write_text(
        json.dumps({**config, "preprocessing": {**config["preprocessing"], "grid_size": 0}}))
    monkeypatch.setattr(mriseg_config, "BUNDLED_WEIGHTS", resealed(folder))
    at = run_app()
    at.button(key=webapp.sample_button_key({"image": slice_samples[0]["image"]})).click().run()
    assert not at.exception, at.exception
    assert [error.value for error in at.error if error.value.startswith("Something went wrong on this page (")]
    assert any("bundled weights" in caption.value for caption in at.sidebar.caption)


@pytest.mark.parametrize("damage", ["weights", "threshold"])
def test_a_hub_copy_that_fails_its_checks_is_never_served_silently(tmp_path, monkeypatch, fresh_model, damage,
                                                                   caplog):
    from test_app_classroom import serve_from_hub_cache
    from test_weights import COMMIT, REPO

    folder = copy_of_shipped(tmp_path / "published")
    if damage == "weights":
        corrupt(folder)
    else:
        config = read_config(folder)
        (folder / "config.json").write_text(
            json.dumps({**config, "postprocessing": {**config["postprocessing"], "threshold": 0.1}}))
    with caplog.at_level(logging.ERROR, logger="mriseg"):
        at = serve_from_hub_cache(folder, tmp_path, monkeypatch)
    assert not at.exception, at.exception
    warnings = [warning.value for warning in at.warning if "failed its integrity check" in warning.value]
    assert len(warnings) == 2  # at the top of the page and in the sidebar
    assert warnings[0].startswith(f"The Hub copy of {REPO}@{COMMIT} failed its integrity check; serving the "
                                  "bundled weights instead. ")
    assert "sha256" in warnings[0] if damage == "weights" else "edited after export" in warnings[0]
    assert f"Model {model_version(read_config(REPO_ROOT / 'weights'))}" in " ".join(c.value for c in at.caption)
    assert any("failed its integrity check" in record.getMessage() for record in caplog.records)


def test_a_working_hub_copy_shows_no_notice(tmp_path, monkeypatch, fresh_model):
    from test_app_classroom import serve_from_hub_cache

    at = serve_from_hub_cache(copy_of_shipped(tmp_path / "published"), tmp_path, monkeypatch)
    assert not at.exception and not at.warning


def test_the_class_password_gates_every_page(monkeypatch):
    monkeypatch.setenv("MRISEG_CLASS_PASSWORD", "glioma-2b")
    at = run_app()
    assert not [b for b in at.button if b.key and b.key.startswith("sample-")] and not at.sidebar.caption
    assert not at.title
    at.text_input(key="class_password_typed").input("glioma-2a")
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert [error.value for error in at.error] == ["Wrong password: ask your teacher for the class password."]
    assert not at.title and not at.sidebar.caption
    at.text_input(key="class_password_typed").input("glioma-2b")
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Segment a brain MRI" and not at.error
    open_sample(at, "TCGA_CS_6290_20000917_12.png")  # the session stays open


def test_the_class_password_can_live_in_secrets(monkeypatch):
    at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=TIMEOUT)
    at.secrets["class_password"] = "from-secrets"
    at.run()
    assert not at.title
    at.text_input(key="class_password_typed").input("from-secrets")
    at.button[0].click().run()
    assert at.title[0].value == "Segment a brain MRI"


def test_no_password_no_form():
    at = start()
    assert at.title[0].value == "Segment a brain MRI" and not at.text_input
