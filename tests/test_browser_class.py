"""A class in a real browser (Debian Chromium through Playwright): the teacher starts a class from presenter mode,
students on laptops and a touch phone join and draw with real pointer events, the teacher reveals and ends the
class; and a class that outlives a restart of ``mriseg serve``."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np
import pytest
from browser_helpers import launch_browser, open_sample, streamlit_server
from conftest import require_chromium

from mriseg.app import classroom as store
from mriseg.app.case import load_sample
from mriseg.metrics import dice

pytestmark = pytest.mark.browser

PROJECTOR = {"width": 1920, "height": 1080}
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
# Five different outlines, in the slice's pixel coordinates (x, y): squares, a triangle, a diamond, a wide box.
SHAPES = {
    "Ana": [(90, 90), (170, 90), (170, 170), (90, 170)],
    "Bo": [(100, 80), (180, 80), (180, 160), (100, 160)],
    "Chen": [(80, 180), (130, 60), (180, 180)],
    "Dara": [(130, 70), (190, 130), (130, 190), (70, 130)],
    "Eli": [(60, 110), (200, 110), (200, 150), (60, 150)],
}
PHONE_STUDENT = "Eli"


@pytest.fixture(scope="module")
def class_db(tmp_path_factory):
    return tmp_path_factory.mktemp("data") / "classes.sqlite"


@pytest.fixture(scope="module")
def class_server(class_db):
    require_chromium()
    with streamlit_server(warm=True, env={"MRISEG_CLASS_DB": str(class_db)}) as (url, _):
        yield url


@pytest.fixture(scope="module")
def chromium():
    require_chromium()
    with launch_browser() as browser:
        yield browser


@pytest.fixture(scope="module")
def largest(sample_index) -> dict:
    return max((e for e in sample_index if e["category"] == "large"), key=lambda e: e["tumour_pixels"])


def start_class(browser, server: str, entry: dict):
    """A projector-sized page in presenter mode that started a class on ``entry``; returns (page, join link)."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport=PROJECTOR)
    page.goto(server)
    open_sample(page, entry)
    expect(page.locator("canvas.overlay")).to_have_count(1)
    page.get_by_role("button", name="Presenter mode").click()
    page.get_by_role("button", name="Start a class").click()
    link = page.get_by_role("link", name=re.compile(r"class\?code=[A-Z2-9]{5}$"))
    expect(link).to_be_visible()
    return page, link.get_attribute("href")


def join(browser, link: str, nickname: str, phone: bool = False):
    """A student's page (its own browser context) joined to the class; returns the page and the drawing canvas."""
    from playwright.sync_api import expect

    context = browser.new_context(viewport=PHONE if phone else LAPTOP, has_touch=phone, is_mobile=phone)
    page = context.new_page()
    page.goto(link)
    code = link.rsplit("=", 1)[1]
    expect(page.get_by_label("Join code")).to_have_value(code)  # the link fills it in
    page.get_by_label("Nickname").fill(nickname)
    page.get_by_role("button", name="Join class").click()
    canvas = page.get_by_role("application", name="Draw your outline")
    expect(canvas).to_be_visible()
    page.wait_for_function("c => c.dataset.shapes === '0'", arg=canvas.element_handle())
    return page, canvas


def on_screen(canvas, point, size: int = 256) -> tuple[float, float]:
    box = canvas.bounding_box()
    return box["x"] + point[0] / size * box["width"], box["y"] + point[1] / size * box["height"]


def draw_with_mouse(page, canvas, corners) -> None:
    """Freehand: press, drag along the corners (many pointer moves per side), release."""
    canvas.scroll_into_view_if_needed()
    page.mouse.move(*on_screen(canvas, corners[0]))
    page.mouse.down()
    for corner in [*corners[1:], corners[0]]:
        page.mouse.move(*on_screen(canvas, corner), steps=15)
    page.mouse.up()


def draw_with_touch(page, canvas, corners) -> None:
    """Polygon tool with a finger: tap every corner, then the first again to close."""
    page.get_by_role("button", name="Polygon").tap()
    canvas.scroll_into_view_if_needed()
    for corner in [*corners, corners[0]]:
        page.touchscreen.tap(*on_screen(canvas, corner))


def fits_without_sideways_scrolling(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def test_a_class_draws_compares_and_ends(class_server, chromium, class_db, largest):
    from playwright.sync_api import expect

    teacher, link = start_class(chromium, class_server, largest)
    code = link.rsplit("=", 1)[1]
    truth = load_sample(largest).truth[0]
    students = {}
    for nickname, corners in SHAPES.items():
        phone = nickname == PHONE_STUDENT
        page, canvas = join(chromium, link, nickname, phone)
        (draw_with_touch if phone else draw_with_mouse)(page, canvas, corners)
        expect(canvas).to_have_attribute("data-shapes", "1")
        page.get_by_role("button", name="Submit outline").click()
        expect(page.get_by_text("wait for the teacher")).to_be_visible()
        assert fits_without_sideways_scrolling(page), nickname
        students[nickname] = page
    expect(teacher.get_by_text("5 submitted", exact=True)).to_be_visible()
    expect(teacher.get_by_text("5 joined", exact=True)).to_be_visible()

    # Each stored mask is the drawn shape on the slice's grid; the agreement map is their sum, pixel for pixel.
    rows = {row.nickname: row.mask for row in store.submissions(code, path=class_db)}
    assert sorted(rows) == sorted(SHAPES)
    for nickname, corners in SHAPES.items():
        drawn = store.rasterise([corners], truth.shape)
        assert dice(rows[nickname], drawn) > 0.97, nickname
    counts = store.agreement(list(rows.values()), truth.shape)
    assert np.array_equal(counts, sum(mask.astype(int) for mask in rows.values()))
    expect(teacher.get_by_text(f"Most students on one pixel: {counts.max()} of 5")).to_be_visible()

    # Nothing to compare with before the reveal; then each student's Dice is the metrics module's.
    assert students["Ana"].get_by_text("Dice vs the expert").count() == 0
    teacher.get_by_role("button", name="Reveal expert mask").click()
    teacher.get_by_role("button", name="Reveal model").click()
    for nickname, page in students.items():
        metric = page.get_by_test_id("stMetric").filter(has_text="Dice vs the expert")
        expect(metric.get_by_test_id("stMetricValue")).to_have_text(f"{dice(rows[nickname], truth):.3f}")
        expect(page.get_by_test_id("stMetric").filter(has_text="Dice vs the model")).to_be_visible()

    teacher.get_by_role("button", name="End class").click()
    with teacher.expect_download() as download:
        teacher.get_by_role("button", name="Download class results").click()
    table = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert sorted(row["nickname"] for row in table) == sorted(SHAPES)
    assert store.get_class(code, class_db) is None


def test_a_class_survives_a_restart_of_the_server(chromium, tmp_path, largest):
    from playwright.sync_api import expect

    database = tmp_path / "classes.sqlite"
    environment = {"MRISEG_CLASS_DB": str(database)}
    truth = load_sample(largest).truth[0]
    with streamlit_server(warm=True, env=environment) as (url, _):
        teacher, link = start_class(chromium, url, largest)
        code = link.rsplit("=", 1)[1]
        teacher_query = teacher.url.split("?", 1)[1]
        for number in range(5):  # straight into the class's database: this test is about the restart
            _, token = store.join(code, f"student {number}", database)
            store.submit(token, np.roll(truth, 4 * number, axis=1), 30.0, database)
        expect(teacher.get_by_text("5 submitted", exact=True)).to_be_visible()
    with streamlit_server(warm=True, env=environment) as (url, _):
        teacher.goto(f"{url}/class?{teacher_query}")
        expect(teacher.get_by_text("5 submitted", exact=True)).to_be_visible()
        expect(teacher.get_by_text(f"Join code {code}")).to_be_visible()
        assert len(store.submissions(code, path=database)) == 5
    teacher.close()
