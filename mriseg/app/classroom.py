"""A class drawing together: classes, students and their outlines in one SQLite file, and what is measured on them.

The database is the only shared state (every Streamlit session and thread opens its own short-lived connection;
WAL mode lets readers go on while one writer commits), so a page reload, a dropped connection or a restart of
``mriseg serve`` loses nothing, and several replicas share a class by sharing the file's folder.
"""

from __future__ import annotations

import csv
import io
import os
import re
import secrets
import sqlite3
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from mriseg.config import PROJECT_ROOT
from mriseg.errors import InputError
from mriseg.metrics import dice, iou

# No I, O, 0 or 1: a code read off a projector at the back of the room cannot be mistyped between look-alikes.
CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 5
NICKNAME_LENGTH = 24
CLASS_LIFETIME_S = 24 * 3600
MAX_POINTS = 4000  # per outline: a freehand border of a 256-px slice has a few hundred
INTER_RATER_DICE = 0.84  # two radiologists outlining the same glioma agree at about this

SCHEMA = """
CREATE TABLE IF NOT EXISTS classes (
    code TEXT PRIMARY KEY, teacher_token TEXT NOT NULL, case_name TEXT NOT NULL, slice_index INTEGER NOT NULL,
    threshold REAL NOT NULL, expert_revealed INTEGER NOT NULL DEFAULT 0, model_revealed INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS students (
    token TEXT PRIMARY KEY, code TEXT NOT NULL REFERENCES classes(code) ON DELETE CASCADE,
    nickname TEXT NOT NULL, joined_at REAL NOT NULL, UNIQUE (code, nickname));
CREATE TABLE IF NOT EXISTS submissions (
    student_token TEXT NOT NULL REFERENCES students(token) ON DELETE CASCADE, case_name TEXT NOT NULL,
    slice_index INTEGER NOT NULL, mask_png BLOB NOT NULL, seconds REAL NOT NULL, submitted_at REAL NOT NULL,
    PRIMARY KEY (student_token, case_name, slice_index));
CREATE TABLE IF NOT EXISTS slides (
    code TEXT NOT NULL REFERENCES classes(code) ON DELETE CASCADE, case_name TEXT NOT NULL,
    slice_index INTEGER NOT NULL, slices INTEGER NOT NULL, pixels BLOB NOT NULL, expert_png BLOB,
    model_png BLOB NOT NULL, PRIMARY KEY (code, case_name, slice_index));
"""


def database_path() -> Path:
    """``MRISEG_CLASS_DB``, else ``classes.sqlite`` in the project's ``data/`` folder (under MRISEG_HOME)."""
    return Path(os.environ.get("MRISEG_CLASS_DB") or PROJECT_ROOT / "data" / "classes.sqlite")


@contextmanager
def connect(path: Path | None = None, write: bool = True) -> Iterator[sqlite3.Connection]:
    """A connection for one transaction, committed at the end (rolled back on an error) and closed; a writer takes
    the write lock at once (no deadlock between two sessions that read, then both want to write)."""
    path = path or database_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    # A class submitting at once queues on the write lock: wait for it rather than fail.
    connection = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA foreign_keys=ON")
        connection.executescript(SCHEMA)
        connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        yield connection
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    finally:
        connection.close()


@dataclass(frozen=True)
class ClassInfo:
    code: str
    case_name: str
    slice_index: int
    threshold: float
    expert_revealed: bool
    model_revealed: bool
    created_at: float


@dataclass(frozen=True)
class Slide:
    """What a class outlines: one slice of a scan (a gallery sample or the teacher's upload), kept in the database
    with its expert mask (None when the scan has none) and the model's mask at the class's threshold, so students
    and a restarted server need neither the file nor a forward pass.

    Attributes:
        pixels: (H, W) intensities of the slice.
        expert: (H, W) boolean, or None.
        model: (H, W) boolean.
        slices: how many slices the scan has (for the caption "slice N").
    """

    pixels: np.ndarray
    expert: np.ndarray | None
    model: np.ndarray
    slices: int = 1


@dataclass(frozen=True)
class Submission:
    nickname: str
    case_name: str
    slice_index: int
    mask: np.ndarray
    seconds: float


def new_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def normalise_code(text: str) -> str:
    """What a student typed, as a code: spaces dropped, upper case."""
    return re.sub(r"\s+", "", text or "").upper()


def start_class(case_name: str, slice_index: int, threshold: float, slide: Slide,
                path: Path | None = None) -> tuple[str, str]:
    """A new class on one slice of a case; returns (join code, the teacher's secret token)."""
    token = secrets.token_urlsafe(16)
    with connect(path) as db:
        expire(db)
        while True:
            code = new_code()
            if db.execute("SELECT 1 FROM classes WHERE code = ?", (code,)).fetchone() is None:
                break
        db.execute("INSERT INTO classes VALUES (?, ?, ?, ?, ?, 0, 0, ?)",
                   (code, token, case_name, slice_index, threshold, time.time()))
        _keep_slide(db, code, case_name, slice_index, slide)
    return code, token


def _keep_slide(db: sqlite3.Connection, code: str, case_name: str, slice_index: int, slide: Slide) -> None:
    pixels = io.BytesIO()
    np.save(pixels, np.asarray(slide.pixels, np.float32), allow_pickle=False)
    expert = None if slide.expert is None else encode_mask(slide.expert)
    db.execute("INSERT OR REPLACE INTO slides VALUES (?, ?, ?, ?, ?, ?, ?)",
               (code, case_name, slice_index, slide.slices, pixels.getvalue(), expert, encode_mask(slide.model)))


def slides(code: str, path: Path | None = None, where: tuple[str, int] | None = None) -> dict[tuple[str, int], Slide]:
    """The slices the class has outlined so far (or only ``where``: (case name, slice index)), by (case name, slice
    index)."""
    query = "SELECT case_name, slice_index, slices, pixels, expert_png, model_png FROM slides WHERE code = ?"
    values: tuple = (code,)
    if where is not None:
        query, values = query + " AND case_name = ? AND slice_index = ?", (code, *where)
    with connect(path, write=False) as db:
        rows = db.execute(query, values).fetchall()
    return {(name, index): Slide(np.load(io.BytesIO(pixels), allow_pickle=False),
                                 None if expert is None else decode_mask(expert), decode_mask(model), slices)
            for name, index, slices, pixels, expert, model in rows}


def current_slide(info: ClassInfo, path: Path | None = None) -> Slide:
    where = (info.case_name, info.slice_index)
    return slides(info.code, path, where)[where]


def expire(db: sqlite3.Connection) -> None:
    """Delete classes older than a day that nobody ended."""
    db.execute("DELETE FROM classes WHERE created_at < ?", (time.time() - CLASS_LIFETIME_S,))


def get_class(code: str, path: Path | None = None) -> ClassInfo | None:
    """The class with this code, or None when there is none (wrong, ended or expired)."""
    with connect(path, write=False) as db:
        row = db.execute("SELECT code, case_name, slice_index, threshold, expert_revealed, model_revealed, "
                         "created_at FROM classes WHERE code = ? AND created_at >= ?",
                         (normalise_code(code), time.time() - CLASS_LIFETIME_S)).fetchone()
    if row is None:
        return None
    return ClassInfo(row[0], row[1], row[2], row[3], bool(row[4]), bool(row[5]), row[6])


def is_teacher(code: str, token: str | None, path: Path | None = None) -> bool:
    with connect(path, write=False) as db:
        row = db.execute("SELECT teacher_token FROM classes WHERE code = ?", (code,)).fetchone()
    return row is not None and token is not None and secrets.compare_digest(row[0], token)


def _teacher_update(code: str, token: str, sql: str, values: tuple, path: Path | None) -> None:
    """Change a class as its teacher; anyone else changes nothing."""
    with connect(path) as db:
        changed = db.execute(f"UPDATE classes SET {sql} WHERE code = ? AND teacher_token = ?",
                             (*values, code, token)).rowcount
    if not changed:
        raise InputError(f"class {code}: only the teacher who started it can change it, and it must still exist")


def reveal(code: str, token: str, what: str, path: Path | None = None) -> None:
    """Show the students ``what``: "expert" (the expert's mask) or "model" (the model's outline)."""
    column = {"expert": "expert_revealed", "model": "model_revealed"}[what]
    _teacher_update(code, token, f"{column} = 1", (), path)


def next_case(code: str, token: str, case_name: str, slice_index: int, slide: Slide,
              path: Path | None = None) -> None:
    """Move the class to another slice; the masks are hidden again, earlier outlines stay for the results."""
    _teacher_update(code, token, "case_name = ?, slice_index = ?, expert_revealed = 0, model_revealed = 0",
                    (case_name, slice_index), path)
    with connect(path) as db:
        _keep_slide(db, code, case_name, slice_index, slide)


def clean_nickname(text: str) -> str:
    """A nickname to show to the class: trimmed, inner spaces collapsed, plain words only; else InputError."""
    nickname = re.sub(r"\s+", " ", text or "").strip()
    if not nickname:
        raise InputError("Type a nickname (any name the class may see; nothing else about you is asked)")
    if len(nickname) > NICKNAME_LENGTH:
        raise InputError(f"A nickname has at most {NICKNAME_LENGTH} characters (this one has {len(nickname)})")
    if not all(char.isalnum() or char in " -.'" for char in nickname):
        raise InputError("A nickname may hold letters, digits, spaces and - . ' only (no markup or symbols)")
    return nickname


def join(code: str, nickname: str, path: Path | None = None) -> tuple[str, str]:
    """Join the class as ``nickname``; returns (the nickname given, the student's token).

    A nickname already taken in the class gets the first free suffix (" 2", " 3", ...): the caller tells the
    student the name they got.
    """
    code, wanted = normalise_code(code), clean_nickname(nickname)
    token = secrets.token_urlsafe(16)
    with connect(path) as db:
        expire(db)
        if db.execute("SELECT 1 FROM classes WHERE code = ?", (code,)).fetchone() is None:
            raise InputError(f"No class has the code {code or '(empty)'}: check it on the projector (classes end "
                             "when the teacher ends them, or after a day)")
        taken = {row[0].casefold() for row in db.execute("SELECT nickname FROM students WHERE code = ?", (code,))}
        given, number = wanted, 1
        while given.casefold() in taken:
            number += 1
            given = f"{wanted[: NICKNAME_LENGTH - len(str(number)) - 1]} {number}"
        db.execute("INSERT INTO students VALUES (?, ?, ?, ?)", (token, code, given, time.time()))
    return given, token


def student(token: str, path: Path | None = None) -> tuple[str, str] | None:
    """(class code, nickname) of a student's token, or None when the class is gone."""
    with connect(path, write=False) as db:
        return db.execute("SELECT code, nickname FROM students WHERE token = ?", (token,)).fetchone()


def in_running_class(token: str | None, path: Path | None = None) -> bool:
    """Whether ``token`` is a student's of a class that still runs (not ended, not expired)."""
    joined = student(token, path) if token else None
    return joined is not None and get_class(joined[0], path) is not None


def submit(token: str, mask: np.ndarray, seconds: float, path: Path | None = None) -> bool:
    """Store a student's outline of the class's current slice; True when it replaced an earlier one."""
    if not np.asarray(mask).any():
        raise InputError("The outline is empty: draw around the tumour, then submit")
    png = encode_mask(mask)
    with connect(path) as db:
        row = db.execute("SELECT c.case_name, c.slice_index FROM students s JOIN classes c ON c.code = s.code "
                         "WHERE s.token = ?", (token,)).fetchone()
        if row is None:
            raise InputError("This class has ended: nothing was submitted")
        replaced = db.execute("SELECT 1 FROM submissions WHERE student_token = ? AND case_name = ? AND "
                              "slice_index = ?", (token, *row)).fetchone() is not None
        db.execute("INSERT OR REPLACE INTO submissions VALUES (?, ?, ?, ?, ?, ?)",
                   (token, *row, png, float(seconds), time.time()))
    return replaced


def counts(code: str, path: Path | None = None) -> tuple[int, int]:
    """(students joined, outlines submitted for the current slice)."""
    with connect(path, write=False) as db:
        joined = db.execute("SELECT COUNT(*) FROM students WHERE code = ?", (code,)).fetchone()[0]
        submitted = db.execute(
            "SELECT COUNT(*) FROM submissions u JOIN students s ON s.token = u.student_token JOIN classes c "
            "ON c.code = s.code WHERE c.code = ? AND u.case_name = c.case_name AND u.slice_index = c.slice_index",
            (code,)).fetchone()[0]
    return joined, submitted


def submissions(code: str, current_only: bool = True, path: Path | None = None) -> list[Submission]:
    """The class's outlines (of the current slice, or of every slice), by nickname."""
    where = " AND u.case_name = c.case_name AND u.slice_index = c.slice_index" if current_only else ""
    with connect(path, write=False) as db:
        rows = db.execute(
            "SELECT s.nickname, u.case_name, u.slice_index, u.mask_png, u.seconds FROM submissions u JOIN students "
            f"s ON s.token = u.student_token JOIN classes c ON c.code = s.code WHERE c.code = ?{where} "
            "ORDER BY s.nickname, u.case_name, u.slice_index", (code,)).fetchall()
    return [Submission(nickname, case, index, decode_mask(png), seconds)
            for nickname, case, index, png, seconds in rows]


def own_submission(token: str, path: Path | None = None) -> Submission | None:
    """A student's outline of the class's current slice, if they submitted one."""
    with connect(path, write=False) as db:
        row = db.execute(
            "SELECT s.nickname, u.case_name, u.slice_index, u.mask_png, u.seconds FROM submissions u JOIN students "
            "s ON s.token = u.student_token JOIN classes c ON c.code = s.code WHERE u.student_token = ? AND "
            "u.case_name = c.case_name AND u.slice_index = c.slice_index", (token,)).fetchone()
    return None if row is None else Submission(row[0], row[1], row[2], decode_mask(row[3]), row[4])


def end_class(code: str, token: str, path: Path | None = None) -> None:
    """Delete the class with its students and outlines (the teacher downloads the results first)."""
    with connect(path) as db:
        deleted = db.execute("DELETE FROM classes WHERE code = ? AND teacher_token = ?", (code, token)).rowcount
    if not deleted:
        raise InputError(f"class {code}: only the teacher who started it can end it")


# --- masks and what is measured on them ----------------------------------------------------------------------------


def encode_mask(mask: np.ndarray) -> bytes:
    ok, png = cv2.imencode(".png", np.asarray(mask, bool).astype(np.uint8) * 255)
    if not ok:
        raise ValueError("could not encode the mask as PNG")
    return png.tobytes()


def decode_mask(png: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE) > 0


def _segments_cross(points: np.ndarray) -> bool:
    """Whether two non-adjacent edges of the closed polygon ``points`` (n, 2) properly cross."""
    a, b = points, np.roll(points, -1, axis=0)
    n = len(points)

    def side(p, q, r):  # sign of the cross product (q - p) x (r - p), for every pair of edges at once
        return np.sign((q[..., 0] - p[..., 0]) * (r[..., 1] - p[..., 1])
                       - (q[..., 1] - p[..., 1]) * (r[..., 0] - p[..., 0]))

    i, j = np.triu_indices(n, k=2)
    keep = ~((i == 0) & (j == n - 1))  # the closing edge touches the first
    i, j = i[keep], j[keep]
    crosses = ((side(a[i], b[i], a[j]) * side(a[i], b[i], b[j]) < 0)
               & (side(a[j], b[j], a[i]) * side(a[j], b[j], b[i]) < 0))
    return bool(crosses.any())


def rasterise(polygons: list, shape: tuple[int, int]) -> np.ndarray:
    """Closed outlines drawn on the slice, in its pixel coordinates (x right, y down; pixel (r, c) covers
    [c, c + 1) x [r, r + 1)), as a mask on the slice's grid: a pixel is marked when its centre is inside an outline.

    Raises InputError for an outline of fewer than 3 points, one that crosses itself, or one with too many points.
    """
    mask = np.zeros(shape, bool)
    for polygon in polygons:
        points = np.asarray(polygon, np.float64).reshape(-1, 2)
        if len(points) < 3:
            raise InputError("An outline needs at least three points: draw around the tumour")
        if len(points) > MAX_POINTS:
            raise InputError(f"An outline may have at most {MAX_POINTS} points")
        if not np.isfinite(points).all():
            raise InputError("The outline has points that are not numbers")
        if _segments_cross(points):
            raise InputError("The outline crosses itself: undo it and draw one loop around the tumour")
        mask |= _inside(points, shape)
    return mask


def _inside(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The pixels whose centres lie inside the polygon: each row's centre line is crossed with every edge, and a
    pixel is inside after an odd number of crossings to its left (OpenCV's fillPoly also marks pixels the border
    only touches, half a pixel too many all round)."""
    height, width = shape
    x0, y0 = points[:, 0], points[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    centre = np.arange(height)[:, None] + 0.5
    crossing = (y0 <= centre) != (y1 <= centre)  # half-open, so a vertex on the line counts once
    with np.errstate(divide="ignore", invalid="ignore"):
        x = x0 + (centre - y0) * (x1 - x0) / (y1 - y0)
    rows, edges = np.nonzero(crossing)
    # The first pixel whose centre is at or right of the crossing changes side.
    columns = np.clip(np.ceil(x[rows, edges] - 0.5), 0, width).astype(int)
    toggles = np.zeros((height, width + 1), np.int32)
    np.add.at(toggles, (rows, columns), 1)
    return np.cumsum(toggles, axis=1)[:, :width] % 2 == 1


@dataclass(frozen=True)
class Score:
    dice: float
    iou: float


def score(mask: np.ndarray, reference: np.ndarray | None) -> Score | None:
    """Dice and IoU against a reference mask (the metrics module Compare uses); None without a reference."""
    if reference is None:
        return None
    return Score(dice(mask, reference), iou(mask, reference))


def agreement(masks: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """How many of the masks mark each pixel."""
    total = np.zeros(shape, np.int32)
    for mask in masks:
        total += np.asarray(mask, bool)
    return total


def majority(counts: np.ndarray, students: int) -> np.ndarray:
    """The pixels more than half the students marked."""
    return counts * 2 > students


def results_csv(rows: list[Submission], shown: dict[tuple[str, int], Slide]) -> str:
    """One row per outline: nickname, case, slice, Dice vs expert (empty without an expert mask), Dice vs model,
    seconds to draw.

    Args:
        rows: the class's outlines.
        shown: :func:`slides` of the class.
    """
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["nickname", "case", "slice", "dice_vs_expert", "dice_vs_model", "seconds_to_draw"])
    for row in rows:
        slide = shown[(row.case_name, row.slice_index)]
        writer.writerow([row.nickname, row.case_name, row.slice_index + 1,
                         "" if slide.expert is None else f"{dice(row.mask, slide.expert):.4f}",
                         f"{dice(row.mask, slide.model):.4f}", f"{row.seconds:.1f}"])
    return out.getvalue()


def masks_zip(rows: list[Submission]) -> bytes:
    """Every outline as a PNG mask (255 = marked), named by nickname, case and slice."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for number, row in enumerate(rows, 1):  # the number keeps names apart that differ only outside ASCII
            name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{row.nickname}_{Path(row.case_name).stem}_{row.slice_index + 1}")
            archive.writestr(f"{number:03d}_{name}.png", encode_mask(row.mask))
    return out.getvalue()
