"""The leave-one-site-out splits in splits/loso/ are what gpu/loso_splits.py writes from the data set."""

from __future__ import annotations

import importlib.util
import json

import pytest
from helpers import REPO_ROOT

from mriseg.data.lgg import site_of

DATA = REPO_ROOT.parent / "shared" / "data" / "lgg-flair"
COMMITTED = REPO_ROOT / "splits" / "loso"


@pytest.fixture(scope="module")
def loso_splits():
    spec = importlib.util.spec_from_file_location("loso_splits", REPO_ROOT / "gpu" / "loso_splits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("control", [None, "DU"])
def test_committed_splits_are_reproduced(loso_splits, tmp_path, control):
    loso_splits.main([str(DATA), str(tmp_path)] + (["--control", control] if control else []))
    written = sorted(tmp_path.glob("*.json"))
    assert written
    for path in written:
        assert json.loads(path.read_text()) == json.loads((COMMITTED / path.name).read_text()), path.name


def test_site_control_differs_only_in_whether_the_site_was_seen():
    unseen, seen = (json.loads((COMMITTED / f"DU-{kind}.json").read_text()) for kind in ("unseen", "seen"))
    assert unseen["validation"] == seen["validation"]
    assert {site_of(name) for name in unseen["validation"]} == {"DU"}
    assert len(unseen["train"]) == len(seen["train"])
    for split in (unseen, seen):
        assert not set(split["train"]) & set(split["validation"])
    assert "DU" not in {site_of(name) for name in unseen["train"]}
    seen_du = [name for name in seen["train"] if site_of(name) == "DU"]
    assert len(seen_du) == 18
