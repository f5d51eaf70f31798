"""A link for every view: the query parameters written as the view changes, read back by a fresh session (AppTest),
and bad or stale ones ignored with one note."""

from __future__ import annotations

import time

import pytest
from app_helpers import TIMEOUT, open_sample, start, upload
from helpers import REPO_ROOT, SAMPLES
from streamlit.testing.v1 import AppTest

from mriseg.app.case import sample_index
from mriseg.app.links import ignored_note, parse, query

VOLUME, MEDIUM = "TCGA_CS_4942_19970222_volume.tif", "TCGA_HT_7686_19950629_10.png"


def opened_from(params: dict[str, str]) -> AppTest:
    """A fresh session opened from a link with these query parameters."""
    at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=TIMEOUT)
    at.query_params.update(params)
    at.run()
    assert not at.exception, at.exception
    return at


def segmented(at: AppTest) -> AppTest:
    """Rerun until a volume's background segmentation is over and its slice slider is drawn."""
    deadline = time.monotonic() + TIMEOUT
    while not any(slider.key == "slice" for slider in at.slider) and time.monotonic() < deadline:
        time.sleep(0.5)
        at.run()
        assert not at.exception, at.exception
    return at


def link_notes(at: AppTest) -> list[str]:
    return [info.value for info in at.info if "this link" in info.value]


def test_parse_keeps_what_is_valid_and_names_the_rest():
    settings, ignored = parse({"sample": VOLUME, "slice": "12", "threshold": "0.3", "colour": "cyan",
                               "style": "contour", "opacity": "0.6", "tta": "1", "presenter": "1", "embed": "true"},
                              sample_index())
    assert settings["sample"]["image"] == VOLUME
    assert (settings["slice"], settings["threshold"], settings["opacity"]) == (12, 0.3, 0.6)
    assert (settings["colour"], settings["style"], settings["tta"], settings["presenter"]) == ("cyan", "contour",
                                                                                                True, True)
    assert ignored == []
    settings, ignored = parse({"sample": "gone.png", "slice": "3", "threshold": "high", "opacity": "nan",
                               "colour": "plaid", "tta": "yes", "zoom": "2"}, sample_index())
    assert settings == {}
    assert sorted(ignored) == ["colour", "opacity", "sample", "slice", "threshold", "tta", "zoom"]
    # A slice past the volume's end, or any slice of a single-slice sample, is stale.
    assert parse({"sample": VOLUME, "slice": "21"}, sample_index())[1] == ["slice"]
    assert parse({"sample": MEDIUM, "slice": "2"}, sample_index())[1] == ["slice"]
    assert parse({"threshold": "0.99"}, sample_index())[1] == ["threshold"]


def test_query_leaves_defaults_out():
    assert query(None, None, 0.5, {"colour": "red", "opacity": 0.45}, False, False) == {"threshold": "0.50",
                                                                                         "tta": "0"}
    assert query(VOLUME, 12, 0.3, {"style": "contour"}, True, True) == {
        "sample": VOLUME, "slice": "12", "threshold": "0.30", "style": "contour", "tta": "1", "presenter": "1"}
    assert ignored_note([]) is None


@pytest.mark.slow
def test_a_link_opens_the_same_view_in_a_fresh_session():
    at = opened_from({"sample": VOLUME, "slice": "12", "threshold": "0.30", "colour": "cyan", "style": "contour",
                      "tta": "0", "presenter": "1"})
    segmented(at)
    assert at.session_state["case"].name == VOLUME
    assert at.slider(key="slice").value == 12
    assert at.session_state["threshold"] == 0.30
    assert at.session_state["presenter"] is True
    assert (at.selectbox(key="colour").value, at.radio(key="style").value) == ("cyan", "contour")
    assert not link_notes(at)
    # The URL the session writes back is the link it was opened from.
    assert at.query_params == {"sample": VOLUME, "slice": "12", "threshold": "0.30", "colour": "cyan",
                               "style": "contour", "tta": "0", "presenter": "1"}


@pytest.mark.slow
def test_the_url_follows_the_view():
    at = open_sample(start(), MEDIUM)
    assert at.query_params["sample"] == MEDIUM
    assert "slice" not in at.query_params and "presenter" not in at.query_params
    at.slider(key="threshold").set_value(0.7).run()
    assert at.query_params["threshold"] == "0.70"
    segmented(at.button(key=f"sample-{VOLUME}").click().run())
    at.slider(key="slice").set_value(7).run()
    assert (at.query_params["sample"], at.query_params["slice"]) == (VOLUME, "7")


@pytest.mark.slow
def test_bad_and_stale_parameters_are_ignored_with_one_note():
    at = opened_from({"sample": "TCGA_gone_19990101_1.png", "slice": "400", "threshold": "abc", "style": "fill"})
    assert not at.exception
    notes = link_notes(at)
    assert len(notes) == 1 and all(f"`{name}`" in notes[0] for name in ("sample", "slice", "threshold"))
    assert "case" not in at.session_state
    # The note is said once, not on every rerun.
    at.run()
    assert not link_notes(at)


@pytest.mark.slow
def test_a_lesson_needs_no_exit_from_presenter_mode():
    """Uncertainty, a gallery sample by name and an upload, all from the presenter toolbar (a link turns it on)."""
    at = opened_from({"presenter": "1"})
    at.selectbox(key="sample_picker").set_value(VOLUME).run()
    assert at.session_state["case"].name == VOLUME and at.query_params["sample"] == VOLUME
    at.toggle(key="presenter_tta").set_value(True).run()
    assert at.session_state["tta"] is True and at.query_params["tta"] == "1"
    assert at.selectbox(key="sample_picker").value == VOLUME
    upload(at, "upload", "my_scan.png", (SAMPLES / MEDIUM).read_bytes())
    assert at.session_state["case"].name == "my_scan.png" and at.session_state["presenter"] is True
    # An upload cannot travel in a link: the link keeps everything else.
    assert "sample" not in at.query_params and at.query_params["tta"] == "1"
    assert at.selectbox(key="sample_picker").value is None
