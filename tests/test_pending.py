"""The background prediction of a volume: the CLI's probabilities bit for bit, a preview first, stopped when nobody
waits, its errors kept for the page."""

from __future__ import annotations

import numpy as np

from mriseg.app.forward_pass import ForwardPassLock
from mriseg.app.pending import PendingPrediction


def start(segmenter, pixels, finish, watched: bool = True) -> PendingPrediction:
    pending = PendingPrediction(segmenter, pixels, False, ForwardPassLock(), finish)
    if watched:
        pending.watch("session")
    return pending.start()


def test_the_same_probabilities_as_predict_with_the_middle_slice_first(segmenter, sample_volume):
    pixels = np.concatenate([sample_volume[0]] * 2)  # 40 slices: three batches
    results = []
    pending = start(segmenter, pixels, lambda probabilities, seconds: results.append(probabilities))
    assert pending.finished.wait(300) and pending.error is None
    np.testing.assert_array_equal(results[0].mean, segmenter.predict(pixels).mean)
    assert pending.preview is not None and pending.preview.shape == pixels.shape[1:]
    assert pending.slices_done == len(pixels)


def test_nobody_waiting_stops_it_and_an_error_is_kept(segmenter, sample_volume):
    results = []
    abandoned = start(segmenter, sample_volume[0], lambda *result: results.append(result), watched=False)
    assert abandoned.finished.wait(300) and abandoned.cancelled and not results and abandoned.error is None

    def fail(probabilities, seconds):
        raise MemoryError("no room for the masks")

    failed = start(segmenter, sample_volume[0], fail)
    assert failed.finished.wait(300) and failed.error == "MemoryError: no room for the masks"
