"""Compare, Metrics and How it works through AppTest, as a class sees them: the threshold lesson's steps and Play, a
flat or hopeless Dice curve explained, a mask of another scan questioned, charts readable on the dark theme, the
page title, and pages that do not import the trainer.

Expected numbers come from the shipped model and the gallery samples, not from the page's own code.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from app_helpers import metric, open_sample, start, upload
from helpers import REPO_ROOT, SAMPLES

from mriseg.app.case import (
    CURVE_THRESHOLDS,
    highest_probability_in_truth,
    load_sample,
    sample_index,
    threshold_curve,
)
from mriseg.app.visualize import CHART_COLOURS, MEMBER_DICE_COLOURS, MEMBER_LOSS_COLOURS

pytestmark = pytest.mark.slow

# The gallery's largest tumour (the model is sure of it: Dice barely moves with the threshold), a small one the model
# misses at every threshold, and a medium one in another head (its mask has the same 256x256 size).
LARGE, MISSED, OTHER = ("TCGA_HT_8563_19981209_11.png", "TCGA_DU_A5TP_19970614_33.png",
                        "TCGA_HT_7686_19950629_10.png")


def entry(image: str) -> dict:
    return next(e for e in sample_index() if e["image"] == image)


def lesson(at) -> float:
    return at.select_slider(key="lesson_threshold").value


def chart(at, key: str) -> dict:
    return json.loads(next(c for c in at.get("plotly_chart") if c.proto.id and key in c.proto.id).proto.spec)


def gallery_curves(segmenter) -> dict[str, list[dict]]:
    curves = {}
    for e in sample_index():
        if e["tumour_pixels"]:
            case = load_sample(e)
            curves[e["image"]] = threshold_curve(segmenter.predict(case.volume.pixels).mean, case.truth,
                                                 segmenter.postprocessing)
    return curves


def dice_span(curve: list[dict]) -> tuple[float, float]:
    return min(row["dice"] for row in curve), max(row["dice"] for row in curve)


def test_lesson_starts_at_the_app_threshold_and_stops_at_the_ends():
    at = open_sample(start(), LARGE)
    at.slider(key="threshold").set_value(0.62).run()
    at.switch_page("pages/compare.py").run()
    assert not at.exception, at.exception
    assert lesson(at) == pytest.approx(0.60)  # the app's threshold, to the nearest step: not 0.95

    at.select_slider(key="lesson_threshold").set_value(0.95).run()
    # the end of the scale: Higher is off (it used to wrap round to 0.05)
    assert at.button(key="lesson_higher").disabled and not at.button(key="lesson_lower").disabled
    at.button(key="lesson_lower").click().run()
    assert lesson(at) == pytest.approx(0.90) and not at.button(key="lesson_higher").disabled

    at.select_slider(key="lesson_threshold").set_value(0.05).run()
    assert at.button(key="lesson_lower").disabled and not at.button(key="lesson_higher").disabled
    at.button(key="lesson_higher").click().run()
    assert lesson(at) == pytest.approx(0.10)


def test_play_steps_down_and_turns_itself_off_at_the_lowest_step():
    at = open_sample(start(), LARGE)
    at.switch_page("pages/compare.py").run()
    at.select_slider(key="lesson_threshold").set_value(0.15).run()
    at.toggle(key="lesson_play").set_value(True).run()
    assert lesson(at) == pytest.approx(0.15)  # Play shows where it starts first
    at.run()  # what the fragment's timer does every 1.2 s
    assert lesson(at) == pytest.approx(0.10) and at.toggle(key="lesson_play").value
    at.run()
    assert lesson(at) == pytest.approx(0.05)
    assert at.toggle(key="lesson_play").value is False  # stopped at the end instead of wrapping to 0.95
    at.run()
    assert lesson(at) == pytest.approx(0.05)
    at.toggle(key="lesson_play").set_value(True).run()  # played again from the lowest step: from the top
    assert lesson(at) == pytest.approx(0.95)


def test_flat_dice_curve_is_explained_with_a_computed_suggestion(segmenter):
    curves = gallery_curves(segmenter)
    low, high = dice_span(curves[LARGE])
    assert high - low < 0.05  # the premise: the model is sure of this tumour
    spans = {name: dice_span(curve) for name, curve in curves.items() if name != LARGE}
    # The sample whose Dice peaks most clearly between the ends: the balance point the lesson is about.
    drops = {name: dice_span(curve)[1] - max(curve[0]["dice"], curve[-1]["dice"]) for name, curve in curves.items()
             if name != LARGE}
    drops = {name: drop for name, drop in drops.items() if drop >= 0.01}
    suggestion = max(drops, key=drops.get)
    best = max(curves[suggestion], key=lambda row: row["dice"])

    at = open_sample(start(), LARGE)
    at.switch_page("pages/compare.py").run()
    assert not at.exception, at.exception
    note = next(i.value for i in at.info if "hardly changes" in i.value)
    assert note.startswith(f"On this case Dice hardly changes with the threshold ({low:.2f} to {high:.2f}): the "
                           "model is sure of almost every pixel.")
    other_low, other_high = spans[suggestion]
    assert (f"({suggestion}, Dice {other_low:.2f} to {other_high:.2f}, best {best['dice']:.2f} at threshold "
            f"{best['threshold']:.2f}), to see the trade-off") in note

    at.button(key="lesson_suggestion").click().run()  # opens the suggested sample right here
    assert not at.exception, at.exception
    assert any(suggestion in c.value for c in at.caption)
    assert not any("hardly changes" in i.value for i in at.info)
    assert not any("to see the trade-off" in i.value for i in at.info)  # it has the balance point

    # The star marks the balance point once the lesson's threshold reaches it, stepping down: not before.
    steps = [row["threshold"] for row in curves[suggestion]]
    above = min((t for t in steps if t > best["threshold"]), default=None)
    if above is not None:
        at.select_slider(key="lesson_threshold").set_value(above).run()
        assert "best Dice" not in [trace.get("name") for trace in chart(at, "lesson_curve")["data"]]
    at.select_slider(key="lesson_threshold").set_value(best["threshold"]).run()
    star = next(trace for trace in chart(at, "lesson_curve")["data"] if trace.get("name") == "best Dice")
    assert star["x"] == [best["threshold"]] and star["y"] == [pytest.approx(best["dice"])]
    assert star["marker"]["symbol"] == "star"
    assert star["text"] == [f"best {best['dice']:.2f} at {best['threshold']:.2f}"]


def test_a_dice_curve_without_a_balance_point_is_said_so(segmenter):
    """The smallest visible tumour: Dice only rises with the threshold, so the lesson points elsewhere."""
    curve = gallery_curves(segmenter)["TCGA_HT_A61B_19991127_49.png"]
    assert max(curve, key=lambda row: row["dice"]) == curve[-1]  # the premise: best at the highest threshold
    at = open_sample(start(), "TCGA_HT_A61B_19991127_49.png")
    at.switch_page("pages/compare.py").run()
    assert not at.exception, at.exception
    assert any("Dice only rises as the threshold goes up" in i.value and "no balance point" in i.value
               for i in at.info)


def test_missed_tumour_gets_no_threshold_rescues_it(segmenter):
    case = load_sample(entry(MISSED))
    probabilities = segmenter.predict(case.volume.pixels).mean
    highest = highest_probability_in_truth(probabilities, case.truth)
    at = open_sample(start(), MISSED)
    at.switch_page("pages/metrics.py").run()
    assert not at.exception, at.exception
    dice_trace = next(t for t in chart(at, "case_curve")["data"] if t["name"] == "Dice")
    assert dice_trace["y"] == [0.0] * len(CURVE_THRESHOLDS)  # the flat 0 that needs explaining
    warning = next(w.value for w in at.warning if "No threshold rescues this miss" in w.value)
    assert f"the highest tumour probability the model gives any pixel inside the manual mask is {highest:.2g}" \
        in warning and "below even the lowest threshold, 0.05" in warning

    at.switch_page("pages/compare.py").run()  # the lesson says so too, rather than "Dice hardly changes"
    assert any("No threshold rescues this miss" in i.value for i in at.info)
    assert not any("hardly changes" in i.value for i in at.info)


def test_compare_questions_a_mask_of_another_scan():
    at = open_sample(start(), LARGE)
    at.switch_page("pages/compare.py").run()
    assert not at.warning  # the data set's own mask
    upload(at, "truth_upload", "own_mask.png", (SAMPLES / entry(LARGE)["mask"]).read_bytes())
    assert any("uploaded mask own_mask.png" in c.value for c in at.caption)
    assert not at.warning
    upload(at, "truth_upload", "other_mask.png", (SAMPLES / entry(OTHER)["mask"]).read_bytes())
    assert not at.exception, at.exception
    assert any("uploaded mask other_mask.png" in c.value for c in at.caption)  # accepted: same size
    assert metric(at, "Dice") == "0.000"
    assert "Check that the mask belongs to this scan" in at.warning[0].value
    assert not any("No threshold rescues" in i.value for i in at.info)  # not blamed on the model
    at.switch_page("pages/metrics.py").run()  # its flat 0 Dice curve gets the same question
    assert any("Check that the mask belongs to this scan" in w.value for w in at.warning)


def test_charts_read_on_the_dark_theme():
    at = open_sample(start(), LARGE)
    at.switch_page("pages/metrics.py").run()
    assert not at.exception, at.exception
    case_curve = chart(at, "case_curve")
    colours = {t["name"]: t["line"]["color"] for t in case_curve["data"]}
    assert colours == {"Dice": CHART_COLOURS["dice"], "IoU": CHART_COLOURS["iou"]}
    for spec in (case_curve, chart(at, "sweep")):
        line = spec["layout"]["shapes"][0]
        assert line["line"]["color"] == CHART_COLOURS["threshold"]  # not plotly's default black
        assert spec["layout"]["annotations"][0]["font"]["color"] == CHART_COLOURS["threshold"]
        assert spec["layout"]["font"]["size"] >= 14
    training = chart(at, "training_curves")
    loss = {t["line"]["color"] for t in training["data"] if "training loss" in t["name"]}
    scores = {t["line"]["color"] for t in training["data"] if "validation per-volume Dice" in t["name"]}
    assert loss and scores and loss <= set(MEMBER_LOSS_COLOURS) and scores <= set(MEMBER_DICE_COLOURS)
    assert training["layout"]["font"]["size"] >= 14

    at.switch_page("pages/compare.py").run()
    curve = chart(at, "lesson_curve")
    assert curve["layout"]["shapes"][0]["line"]["color"] == CHART_COLOURS["threshold"]
    assert curve["data"][0]["line"]["color"] == CHART_COLOURS["dice"]


def test_how_it_works_title_matches_its_navigation_label_and_draws_on_the_dark_theme():
    at = open_sample(start(), LARGE)
    at.switch_page("pages/how_it_works.py").run()
    assert not at.exception, at.exception
    assert at.title[0].value.startswith("How it works")  # the navigation lists the page as "How it works"
    dot = at.get("graphviz_chart")[0].proto.spec
    assert 'bgcolor="transparent"' in dot


def test_pages_do_not_import_the_trainer():
    """Metrics and How it works used helpers of mriseg.training.export / mriseg.training.ensemble, which import the
    trainer and torchvision: seconds added to a page's first visit. Import what the pages import, in a fresh
    interpreter."""
    probe = (
        "import ast, importlib, sys\n"
        "for page in ('pages/compare.py', 'pages/metrics.py', 'pages/how_it_works.py'):\n"
        "    for node in ast.walk(ast.parse(open(page).read())):\n"
        "        if isinstance(node, ast.ImportFrom) and node.module.startswith('mriseg'):\n"
        "            importlib.import_module(node.module)\n"
        "print(sorted(m for m in ('mriseg.training.trainer', 'mriseg.training.export', 'mriseg.training.ensemble',"
        " 'torchvision') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=300, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"
