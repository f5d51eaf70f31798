"""Write leave-one-site-out splits: for each scanner site, its patients as validation and all others as training.

    PYTHONPATH=. python gpu/loso_splits.py ../shared/data/lgg-flair splits/loso
    PYTHONPATH=. python gpu/loso_splits.py ../shared/data/lgg-flair splits/loso --control DU

Does the model travel to a scanner it never saw? Each split trains on four of the LGG set's sites and scores the
fifth (EZ, with one patient, is too small to score alone and always trains). A U-Net trained on one of these splits
still picks its epoch on the held-out site, so its score there is slightly optimistic; the site's gap to the others
is the point. `runs/leave-one-site-out.runs` trains one U-Net per split on a lent GPU (`train_on_device.sh`).

``--control SITE`` writes a pair that isolates the site's cost on a CPU budget: half of the site's patients are
scored in both; ``SITE-unseen.json`` trains on every other site, ``SITE-seen.json`` on as many patients with the
site's other half among them. The same recipe on both (and the same batches an epoch: `--steps-per-epoch`, as
the site's scans may hold more slices) then differs only in whether the site was seen.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from mriseg.data.lgg import find_cases

MIN_PATIENTS_TO_SCORE = 3


def leave_one_site_out(by_site: dict[str, list[str]]) -> dict[str, dict[str, list[str]]]:
    """``{site: split}`` with the site's patients as validation, for every site with enough patients to score.

    Example:
        >>> leave_one_site_out({"CS": ["c1", "c2", "c3"], "EZ": ["e1"]})["CS"]
        {'train': ['e1'], 'validation': ['c1', 'c2', 'c3']}
    """
    names = [name for patients in by_site.values() for name in patients]
    return {site: {"train": sorted(set(names) - set(held_out)), "validation": sorted(held_out)}
            for site, held_out in sorted(by_site.items()) if len(held_out) >= MIN_PATIENTS_TO_SCORE}


def site_control(by_site: dict[str, list[str]], site: str, seed: int = 0) -> dict[str, dict[str, list[str]]]:
    """``{"SITE-unseen": split, "SITE-seen": split}``: the same scored half of ``site``, equal training sizes.

    Example:
        >>> pair = site_control({"DU": ["d1", "d2", "d3", "d4"], "HT": ["h1", "h2", "h3"]}, "DU")
        >>> pair["DU-unseen"]["validation"] == pair["DU-seen"]["validation"]
        True
        >>> [len(pair[name]["train"]) for name in pair]
        [3, 3]
    """
    rng = random.Random(seed)
    patients = sorted(by_site[site])
    rng.shuffle(patients)
    scored, seen = sorted(patients[: (len(patients) + 1) // 2]), patients[(len(patients) + 1) // 2:]
    others = sorted(name for other, names in by_site.items() if other != site for name in names)
    kept_others = rng.sample(others, len(others) - len(seen))
    return {f"{site}-unseen": {"train": others, "validation": scored},
            f"{site}-seen": {"train": sorted(kept_others + seen), "validation": scored}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--control", metavar="SITE", help="write the seen/unseen pair for this site instead")
    args = parser.parse_args(argv)
    by_site: dict[str, list[str]] = {}
    for case in find_cases(args.data_dir):
        by_site.setdefault(case.site, []).append(case.name)
    splits = site_control(by_site, args.control) if args.control else leave_one_site_out(by_site)
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    for name, split in splits.items():
        (Path(args.out_dir) / f"{name}.json").write_text(json.dumps(split, indent=1) + "\n")
        print(f"{name}: {len(split['train'])} training, {len(split['validation'])} scored patients")


if __name__ == "__main__":
    main()
