"""Write leave-one-site-out splits: for each scanner site, its patients as validation and all others as training.

    PYTHONPATH=. python gpu/loso_splits.py ../shared/data/lgg-flair splits/loso

Does the model travel to a scanner it never saw? Each split trains on four of the LGG set's sites and scores the
fifth (EZ, with one patient, is too small to score alone and always trains). A U-Net trained on one of these splits
still picks its epoch on the held-out site, so its score there is slightly optimistic; the site's gap to the others
is the point. `runs/leave-one-site-out.runs` trains one U-Net per split on a lent GPU (`train_on_device.sh`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mriseg.data.lgg import find_cases

MIN_PATIENTS_TO_SCORE = 3


def main(data_dir: str, out_dir: str) -> None:
    cases = find_cases(data_dir)
    names = [case.name for case in cases]
    by_site: dict[str, list[str]] = {}
    for case in cases:
        by_site.setdefault(case.site, []).append(case.name)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    for site, held_out in sorted(by_site.items()):
        if len(held_out) < MIN_PATIENTS_TO_SCORE:
            continue
        split = {"train": sorted(set(names) - set(held_out)), "validation": sorted(held_out)}
        (Path(out_dir) / f"{site}.json").write_text(json.dumps(split, indent=1) + "\n")
        print(f"{site}: {len(split['train'])} training, {len(held_out)} held-out patients")


if __name__ == "__main__":
    main(*sys.argv[1:3])
