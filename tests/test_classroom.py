"""The class store (a real SQLite file) and what is measured on the outlines: codes, nicknames, submissions,
agreement, majority, the CSV and the masks' zip."""

from __future__ import annotations

import csv
import io
import sqlite3
import threading
import time
import zipfile

import numpy as np
import pytest

from mriseg.app import classroom as store
from mriseg.errors import InputError
from mriseg.metrics import dice, iou


@pytest.fixture
def db(tmp_path):
    return tmp_path / "data" / "classes.sqlite"


def square(top: int, left: int, side: int, shape=(16, 16)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[top : top + side, left : left + side] = True
    return mask


SLIDE = store.Slide(np.arange(256, dtype=np.float32).reshape(16, 16), square(1, 1, 4), square(0, 0, 3))


def test_codes_avoid_look_alike_characters(db):
    codes = {store.start_class("a.png", 0, 0.5, SLIDE, db)[0] for _ in range(50)}
    assert len(codes) == 50
    assert all(len(code) == 5 and not set(code) & set("IO01") for code in codes)
    assert store.normalise_code(" ab c d2 ") == "ABCD2"


def test_join_trims_refuses_markup_and_suffixes_duplicates(db):
    code, _ = store.start_class("a.png", 0, 0.5, SLIDE, db)
    assert store.join(code.lower(), "  Ana   Maria ", db)[0] == "Ana Maria"
    assert store.join(code, "ana maria", db)[0] == "ana maria 2"
    assert store.join(code, "José", db)[0] == "José"
    for bad, words in (("<b>x</b>", "no markup"), ("**bold**", "no markup"), ("", "Type a nickname"),
                       ("x" * 25, "at most 24")):
        with pytest.raises(InputError, match=words):
            store.join(code, bad, db)
    with pytest.raises(InputError, match="No class has the code"):
        store.join("ZZZZZ", "Bo", db)
    assert store.counts(code, db) == (3, 0)


def test_submission_replaces_the_first_and_survives_a_new_connection(db):
    code, teacher = store.start_class("a.png", 0, 0.5, SLIDE, db)
    _, token = store.join(code, "Bo", db)
    assert store.submit(token, square(2, 2, 4), 12.5, db) is False
    assert store.submit(token, square(3, 3, 5), 20.0, db) is True
    with pytest.raises(InputError, match="empty"):
        store.submit(token, np.zeros((16, 16), bool), 1.0, db)
    assert store.counts(code, db) == (1, 1)
    # A new process reads the file afresh: what a restarted server sees.
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    own = store.own_submission(token, db)
    assert np.array_equal(own.mask, square(3, 3, 5)) and own.seconds == 20.0 and own.nickname == "Bo"


def test_the_slide_and_its_masks_come_back_from_the_file(db):
    code, _ = store.start_class("a.png", 0, 0.5, SLIDE, db)
    slide = store.current_slide(store.get_class(code, db), db)
    assert np.array_equal(slide.pixels, SLIDE.pixels) and slide.pixels.dtype == np.float32
    assert np.array_equal(slide.expert, SLIDE.expert) and np.array_equal(slide.model, SLIDE.model)
    upload, _ = store.start_class("mine.nii.gz", 4, 0.5, store.Slide(SLIDE.pixels, None, SLIDE.model, 9), db)
    slide = store.current_slide(store.get_class(upload, db), db)
    assert slide.expert is None and slide.slices == 9


def test_next_case_hides_the_masks_and_counts_only_the_current_slice(db):
    code, teacher = store.start_class("a.png", 0, 0.5, SLIDE, db)
    _, token = store.join(code, "Bo", db)
    store.submit(token, square(2, 2, 4), 3.0, db)
    store.reveal(code, teacher, "expert", db)
    store.reveal(code, teacher, "model", db)
    info = store.get_class(code, db)
    assert info.expert_revealed and info.model_revealed
    with pytest.raises(InputError, match="only the teacher"):
        store.reveal(code, "not-the-teacher", "expert", db)
    store.next_case(code, teacher, "b.png", 3, store.Slide(np.ones((16, 16)), None, square(0, 0, 2), 20), db)
    info = store.get_class(code, db)
    assert (info.case_name, info.slice_index, info.expert_revealed, info.model_revealed) == ("b.png", 3, False, False)
    assert store.counts(code, db) == (1, 0)
    assert store.own_submission(token, db) is None
    assert len(store.submissions(code, current_only=False, path=db)) == 1


def test_end_deletes_everything_and_old_classes_expire(db):
    code, teacher = store.start_class("a.png", 0, 0.5, SLIDE, db)
    _, token = store.join(code, "Bo", db)
    store.submit(token, square(2, 2, 4), 3.0, db)
    with pytest.raises(InputError):
        store.end_class(code, "someone else", db)
    store.end_class(code, teacher, db)
    assert store.get_class(code, db) is None and store.student(token, db) is None
    with sqlite3.connect(db) as raw:
        assert raw.execute("SELECT COUNT(*) FROM submissions").fetchone()[0] == 0
    with pytest.raises(InputError, match="ended"):
        store.submit(token, square(2, 2, 4), 3.0, db)

    old, _ = store.start_class("a.png", 0, 0.5, SLIDE, db)
    with sqlite3.connect(db) as raw:
        raw.execute("UPDATE classes SET created_at = ? WHERE code = ?", (time.time() - 25 * 3600, old))
    assert store.get_class(old, db) is None
    with pytest.raises(InputError, match="No class has the code"):
        store.join(old, "Bo", db)


def test_forty_students_submitting_at_once_are_all_stored(db):
    code, _ = store.start_class("a.png", 0, 0.5, SLIDE, db)
    tokens = [store.join(code, f"s{n}", db)[1] for n in range(40)]
    errors = []

    def send(token, n):
        try:
            store.submit(token, square(n % 10, n % 7, 5, (64, 64)), n, db)
        except Exception as error:  # collected: the assertion below names them
            errors.append(error)

    threads = [threading.Thread(target=send, args=(token, n)) for n, token in enumerate(tokens)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and store.counts(code, db) == (40, 40)


def test_rasterise_fills_pixel_centres_on_the_slice_grid():
    # The square from (2, 3) to (6, 8) in continuous coordinates covers the pixels whose centres lie inside it.
    mask = store.rasterise([[[3, 2], [8, 2], [8, 6], [3, 6]]], (10, 12))
    expected = np.zeros((10, 12), bool)
    expected[2:6, 3:8] = True
    assert np.array_equal(mask, expected)
    two = store.rasterise([[[0, 0], [2, 0], [2, 2], [0, 2]], [[5, 5], [7, 5], [7, 7], [5, 7]]], (10, 12))
    assert two.sum() == 8
    with pytest.raises(InputError, match="crosses itself"):
        store.rasterise([[[0, 0], [4, 4], [4, 0], [0, 4]]], (10, 10))  # a bow tie
    with pytest.raises(InputError, match="three points"):
        store.rasterise([[[0, 0], [4, 4]]], (10, 10))


def test_scores_agreement_and_majority_use_the_metrics_module():
    masks = [square(0, 0, 4), square(1, 1, 4), square(2, 2, 4)]
    expert = square(1, 1, 4)
    result = store.score(masks[0], expert)
    assert result.dice == dice(masks[0], expert) and result.iou == iou(masks[0], expert)
    assert store.score(masks[0], None) is None
    counts = store.agreement(masks, (16, 16))
    assert np.array_equal(counts, sum(m.astype(int) for m in masks))
    assert np.array_equal(store.majority(counts, 3), counts >= 2)


def test_results_csv_and_masks_zip_hold_every_outline():
    rows = [store.Submission("Ana", "a.png", 0, square(0, 0, 4), 10.0),
            store.Submission("Bo", "a.png", 0, square(1, 1, 4), 12.34),
            store.Submission("Bo", "upload.nii.gz", 2, square(1, 1, 4), 5.0)]
    upload = store.Slide(SLIDE.pixels, None, square(2, 2, 4), 3)
    table = list(csv.DictReader(io.StringIO(store.results_csv(rows, {("a.png", 0): SLIDE,
                                                                     ("upload.nii.gz", 2): upload}))))
    assert [row["nickname"] for row in table] == ["Ana", "Bo", "Bo"]
    assert float(table[0]["dice_vs_expert"]) == pytest.approx(dice(rows[0].mask, SLIDE.expert), abs=1e-4)
    assert float(table[1]["dice_vs_model"]) == pytest.approx(dice(rows[1].mask, SLIDE.model), abs=1e-4)
    assert table[1]["seconds_to_draw"] == "12.3"
    assert table[2]["dice_vs_expert"] == "" and table[2]["slice"] == "3"  # an upload without an expert mask
    with zipfile.ZipFile(io.BytesIO(store.masks_zip(rows))) as archive:
        names = archive.namelist()
        assert names == ["001_Ana_a_1.png", "002_Bo_a_1.png", "003_Bo_upload.nii_3.png"]
        assert np.array_equal(store.decode_mask(archive.read(names[1])), rows[1].mask)


def join_button(at):
    return next(button for button in at.button if button.label == "Join class")


@pytest.mark.slow
def test_class_page_says_what_is_wrong_and_changes_nothing(db, monkeypatch):
    """Through AppTest: a wrong code and a nickname with markup each get one clear message; nobody joins."""
    from app_helpers import start

    monkeypatch.setenv("MRISEG_CLASS_DB", str(db))
    code, _ = store.start_class("TCGA_HT_8563_19981209_11.png", 0, 0.5, SLIDE, db)
    at = start()
    at.switch_page("pages/classroom.py").run()
    at.text_input(key="join_code").set_value("ZZZZZ")
    at.text_input(key="nickname").set_value("Ana")
    join_button(at).click().run()
    assert [e.value for e in at.error] == ["No class has the code ZZZZZ: check it on the projector (classes end "
                                           "when the teacher ends them, or after a day)"]
    at.text_input(key="join_code").set_value(code.lower())
    at.text_input(key="nickname").set_value("<script>")
    join_button(at).click().run()
    assert "no markup" in at.error[0].value
    assert store.counts(code, db) == (0, 0)
    at.text_input(key="nickname").set_value("Ana")
    join_button(at).click().run()
    assert not at.exception, at.exception
    assert store.counts(code, db) == (1, 0)
    assert at.query_params["code"] == code and "student" in at.query_params
    assert any(m.value == f"#### Class {code} · you are Ana" for m in at.markdown)


@pytest.mark.slow
def test_teacher_starts_moves_on_and_ends_a_class(db, monkeypatch, sample_index):
    """Through AppTest: Start a class on the chosen sample, Next case, End class: the results are offered once and
    the class is gone from the database."""
    from app_helpers import start

    monkeypatch.setenv("MRISEG_CLASS_DB", str(db))
    at = start()
    at.switch_page("pages/classroom.py").run()
    next(button for button in at.button if button.label == "Start a class").click().run()
    assert not at.exception, at.exception
    code = at.query_params["code"]
    info = store.get_class(code, db)
    assert info.case_name == sample_index[0]["image"] and info.slice_index == 0
    assert any(m.value == "### 0 submitted" for m in at.markdown)
    _, token = store.join(code, "Ana", db)
    store.submit(token, square(100, 100, 30, (256, 256)), 9.0, db)
    next(button for button in at.button if button.label == "Next case").click().run()
    assert store.get_class(code, db).case_name == sample_index[1]["image"]
    assert any(m.value == "### 0 submitted" for m in at.markdown)
    next(button for button in at.button if button.label == "End class").click().run()
    assert not at.exception, at.exception
    assert store.get_class(code, db) is None
    assert [b.label for b in at.get("download_button")] == ["Download class results", "Download outlines (PNG masks)"]


@pytest.mark.slow
def test_a_class_on_the_teachers_upload_has_no_expert_to_reveal(db, monkeypatch, slice_samples):
    """A class on an uploaded scan: its slice and the model's mask are in the database, the expert's is not."""
    from app_helpers import start, upload
    from helpers import SAMPLES

    monkeypatch.setenv("MRISEG_CLASS_DB", str(db))
    at = start()
    at.radio(key="source").set_value("Upload a file").run()
    entry = slice_samples[0]
    upload(at, "upload", "my_scan.png", (SAMPLES / entry["image"]).read_bytes())
    at.switch_page("pages/classroom.py").run()
    assert at.selectbox[0].value == "my_scan.png"  # the upload is offered first
    next(button for button in at.button if button.label == "Start a class").click().run()
    assert not at.exception, at.exception
    info = store.get_class(at.query_params["code"], db)
    slide = store.current_slide(info, db)
    assert info.case_name == "my_scan.png" and slide.expert is None and slide.model.any()
    assert next(button for button in at.button if button.label == "Reveal expert mask").disabled
    assert any("no expert mask" in caption.value for caption in at.caption)


def test_a_student_in_a_running_class_sees_only_the_class_page(db, monkeypatch):
    """Through AppTest: with a student's link, the other pages (which show the model's outline and the expert's
    mask) say so and lead back (and app.py hides the page list). Once the class has ended, the link opens the app
    again."""
    from app_helpers import start

    monkeypatch.setenv("MRISEG_CLASS_DB", str(db))
    code, teacher = store.start_class("TCGA_HT_8563_19981209_11.png", 0, 0.5, SLIDE, db)
    _, token = store.join(code, "Ana", db)
    at = start()
    at.query_params.update({"code": code, "student": token})
    at.switch_page("pages/segment.py").run()
    assert not at.exception, at.exception
    assert [i.value for i in at.info] == ["You are in a class: your class page is the one to use until your teacher "
                                          "ends the class."]
    assert not at.get("bidi_component") and not at.metric  # no overlay, no numbers
    at.switch_page("pages/compare.py").run()
    assert not at.image and at.info
    at.switch_page("pages/classroom.py").run()
    assert any(m.value == f"#### Class {code} · you are Ana" for m in at.markdown)

    store.end_class(code, teacher, db)
    at.switch_page("pages/segment.py").run()
    assert not [i for i in at.info if "You are in a class" in i.value] and at.get("bidi_component")
