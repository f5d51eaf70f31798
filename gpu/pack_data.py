"""Pack the LGG folder for a lent GPU machine, whose transfer limit (64 MiB with the repository) the PNGs exceed.

FLAIR slices go as JPEG (quality 93: mean error about 1 grey level, at most 14), masks as lossless PNG, all in
one gzipped tar (small files cost more than their bytes in the transfer). ``unpack_data.py`` turns it back into
the Kaggle PNG layout on the device. Models trained there are evaluated here, on the original PNGs.

Usage: ``.venv/bin/python gpu/pack_data.py ../shared/data/lgg-flair .gpu/data.tgz``
"""

import io
import sys
import tarfile
from pathlib import Path

import cv2

JPEG_QUALITY = 93


def pack(source: Path, target: Path) -> int:
    target.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with tarfile.open(target, "w:gz") as archive:
        for path in sorted(source.glob("*/*.png")):
            if path.name.endswith("_mask.png"):
                data, name = path.read_bytes(), path.name
            else:
                image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
                ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY,
                                                           cv2.IMWRITE_JPEG_OPTIMIZE, 1])
                if not ok:
                    raise RuntimeError(f"could not encode {path}")
                data, name = encoded.tobytes(), path.stem + ".jpg"
            info = tarfile.TarInfo(f"data/{path.parent.name}/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
            count += 1
    return count


if __name__ == "__main__":
    count = pack(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"{count} files -> {sys.argv[2]} ({Path(sys.argv[2]).stat().st_size / 2**20:.1f} MiB)")
