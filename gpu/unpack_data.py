"""Device side: turn the archive of ``pack_data.py`` back into the Kaggle PNG layout.

Usage: ``python3 gpu/unpack_data.py .gpu/data.tgz /tmp/lgg``
"""

import sys
import tarfile
from multiprocessing import Pool
from pathlib import Path

import cv2
import numpy as np


def convert(item: tuple[str, bytes, str]) -> None:
    name, data, target = item
    patient, file_name = name.split("/")[-2:]
    folder = Path(target) / patient
    folder.mkdir(parents=True, exist_ok=True)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(folder / (Path(file_name).stem + ".png")), image)


if __name__ == "__main__":
    archive_path, target = sys.argv[1], sys.argv[2]
    with tarfile.open(archive_path) as archive:
        items = [(member.name, archive.extractfile(member).read(), target) for member in archive if member.isfile()]
    with Pool() as pool:
        pool.map(convert, items, chunksize=64)
    print(f"unpacked {len(items)} files into {target}; {len(list(Path(target).glob('*/*_mask.png')))} masks")
