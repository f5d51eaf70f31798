"""The app's forward-pass lock: one holder at a time, and every waiting urgent pass before any background one."""

from __future__ import annotations

import threading
import time

from mriseg.app.forward_pass import ForwardPassLock


def test_waiting_urgent_passes_go_before_background_ones():
    lock, order = ForwardPassLock(), []
    holding, inside = threading.Event(), []

    def hold() -> None:
        with lock.background():
            holding.set()
            time.sleep(0.3)  # meanwhile a volume's batches and then two slices queue up

    def run(kind: str, name: str) -> None:
        with getattr(lock, kind)():
            inside.append(name)
            assert len(inside) == 1  # nobody else holds it
            order.append(name)
            time.sleep(0.01)
            inside.remove(name)

    first = threading.Thread(target=hold)
    first.start()
    holding.wait()
    threads = [threading.Thread(target=run, args=("background", f"batch {i}")) for i in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.05)
    threads += [threading.Thread(target=run, args=("urgent", f"slice {i}")) for i in range(2)]
    for thread in threads[3:]:
        thread.start()
    for thread in [first, *threads]:
        thread.join(5)
    assert sorted(order[:2]) == ["slice 0", "slice 1"] and sorted(order[2:]) == ["batch 0", "batch 1", "batch 2"]
    assert lock.waiting_urgent == 0
