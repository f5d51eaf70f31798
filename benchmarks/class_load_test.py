"""A class at once, driven by light clients: N Streamlit sessions upload different scans to one ``mriseg serve``.

Each student is a small asyncio client that speaks Streamlit's own websocket protocol (the protobufs shipped in
``streamlit.proto``), not a browser, so the server keeps the machine's cores to itself. A student opens the
Segment page, switches "Scan" to "Upload a file" and waits; once every student is ready they all upload at the
same moment, each a different scan (shifted copies of the gallery's slices; every ``--volume-every``-th student a
shifted copy of the gallery's 20-slice TIFF volume), so every upload needs its own forward pass.

Measured per student, from the moment it asks for an upload URL (what a browser does as soon as a file is
chosen): the time until the threshold view (the overlay, a ``st.components.v2`` component that arrives as a
``bidi_component`` element, its pictures inline in its JSON data) has arrived, and the time until that run's
``script_finished``. Reported: slowest, median and 90th percentile; the server's resident memory (VmRSS sampled
every 0.2 s, and its VmHWM peak); the server's CPU seconds during the uploads; the clients' own CPU seconds; and
"students per core": how many sessions had their first overlay within ``--target`` seconds, per CPU core.

A browser does more than these clients: it renders, and fetches the media files (gallery thumbnails, the 3D
viewer's files); the server's side of a session (script runs, the forward pass, the messages) is the same.

``--draw`` plays a class drawing together instead: the teacher's view of a class (pages/classroom.py) open in
Chromium, then ``--sessions`` light clients open the class link, type a nickname and press Join class, and all press
Submit outline at once (each sends a different square, as the drawing component sends it). Reported: outlines
stored, each submission's answer time, and when the teacher's view (refreshed twice a second) showed them all.

Run from the repository root:  .venv/bin/python benchmarks/class_load_test.py --sessions 30
(or ``--draw --sessions 40``; ``--volume-every 3 --volume-kind brats``: 10 of the 30 upload BraTS-size volumes,
which the app segments in the background, polled as the browser polls, first overlay and final overlay timed;
``--hostile 2``: two of them upload a hostile file, which must be refused with a message)
Options: ``--waves 2`` (a second class of new uploads: memory should stay bounded), ``--details`` (each student's
timeline), ``--server-env NAME=VALUE`` (Streamlit settings for the server, e.g.
``STREAMLIT_SERVER_FILE_WATCHER_TYPE=none``, to compare against the configuration users run).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import gzip
import hashlib
import io
import json
import mimetypes
import os
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
from PIL import Image
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.Common_pb2 import FileURLs, FileURLsResponse, UploadedFileInfo
from streamlit.proto.Element_pb2 import Element
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.proto.WidgetStates_pb2 import WidgetState
from websockets.asyncio.client import ClientConnection, connect

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))  # the helpers the browser tests use to serve the app

from browser_helpers import CHROMIUM, CHROMIUM_FLAGS, cpu_seconds, memory_mb, streamlit_server  # noqa: E402

from mriseg.app.case import load_sample, sample_index  # noqa: E402

OVERLAY_COMPONENT = "mriseg_threshold_view"
OVERLAY_CAPTION = "Tumour at threshold"
PRELIMINARY_CAPTION = "Preliminary tumour outline"
UPLOAD_CHOICE = "Upload a file"
XSRF_COOKIE = "_streamlit_xsrf"


class SessionError(RuntimeError):
    """A student's session showed an error, broke the protocol or took too long."""


# --- the scans ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scan:
    name: str
    data: bytes
    slices: int  # 0: a hostile file, which must be refused with a message


def hostile_dicom(index: int, name: str) -> Scan:
    """A DICOM of under 1 kB that declares hundreds of 256x256 frames (issue 31's server killer), each student's
    declaring another count."""
    from helpers import dicom_declaring

    return Scan(name, dicom_declaring(256, 256, 999 - index, 100), 0)


def shifted_slice(image: str, shift: tuple[int, int], name: str) -> Scan:
    """A gallery slice rolled by ``shift`` pixels: new bytes (its own prediction), the same anatomy."""
    pixels = cv2.imread(str(REPO_ROOT / "samples" / image), cv2.IMREAD_GRAYSCALE)
    ok, png = cv2.imencode(".png", np.roll(pixels, shift, axis=(0, 1)))
    if not ok:
        raise ValueError(f"could not encode a shifted {image}")
    return Scan(name, png.tobytes(), 1)


def shifted_volume(image: str, shift: tuple[int, int], name: str) -> Scan:
    """The gallery's multi-page TIFF with every page rolled by ``shift``: a whole patient to segment."""
    with Image.open(REPO_ROOT / "samples" / image) as tiff:
        pages = [np.roll(np.asarray(page.convert("L")), shift, axis=(0, 1)) for page in _pages(tiff)]
    buffer = io.BytesIO()
    first, *rest = (Image.fromarray(page) for page in pages)
    first.save(buffer, format="TIFF", save_all=True, append_images=rest, compression="tiff_deflate")
    return Scan(name, buffer.getvalue(), len(pages))


def _pages(tiff: Image.Image) -> Iterator[Image.Image]:
    for index in range(tiff.n_frames):
        tiff.seek(index)
        yield tiff.copy()


@functools.cache
def _brats_size() -> np.ndarray:
    from volume_helpers import brats_size_volume

    return brats_size_volume()


def shifted_brats_volume(shift: tuple[int, int], name: str) -> Scan:
    """The BraTS-size volume (155 slices of 240x240, skull-stripped, 1 mm) rolled by ``shift``, as a NIfTI file
    (x, y, z order, as BraTS ships it)."""
    import nibabel as nib

    volume = np.roll(_brats_size(), shift, axis=(1, 2))
    data = gzip.compress(nib.Nifti1Image(volume.transpose(2, 1, 0), np.eye(4)).to_bytes(), compresslevel=1)
    return Scan(name, data, len(volume))


def make_scans(count: int, wave: int, volume_every: int, volume_kind: str = "tiff", hostile: int = 0) -> list[Scan]:
    """Distinct uploads for one wave: shifted gallery slices, every ``volume_every``-th (0: none) a shifted
    volume: the gallery's 20-slice TIFF, or with ``volume_kind="brats"`` the BraTS-size NIfTI volume. Each wave
    shifts further, so no wave repeats a scan (a repeat would be served from the prediction cache). The first
    ``hostile`` students upload a hostile file instead (:func:`hostile_dicom`)."""
    entries = sample_index()
    slices = [entry["image"] for entry in entries if entry["category"] != "volume"]
    volume = next(entry["image"] for entry in entries if entry["category"] == "volume")
    slice_rows, volume_rows = count // len(slices) + 1, count // max(volume_every, 1) + 1  # rows a wave uses
    scans = []
    for index in range(count):
        if index < hostile:
            scans.append(hostile_dicom(wave * count + index, f"student_{wave}_{index:02d}.dcm"))
        elif volume_every and index % volume_every == volume_every - 1:
            shift = (1 + wave * volume_rows + index // volume_every, 3)
            scans.append(shifted_brats_volume(shift, f"student_{wave}_{index:02d}.nii.gz") if volume_kind == "brats"
                         else shifted_volume(volume, shift, f"student_{wave}_{index:02d}.tif"))
        else:
            shift = (1 + wave * slice_rows + index // len(slices), index % 5)
            scans.append(shifted_slice(slices[index % len(slices)], shift, f"student_{wave}_{index:02d}.png"))
    return scans


# --- a minimal Streamlit client ----------------------------------------------------------------------------------


@dataclass
class Run:
    """What one script run sent: the moments that matter (perf_counter seconds) and a census of its elements."""

    started_at: float | None = None  # the run's new_session: the server has begun the script
    segmenting_at: float | None = None  # its first progress bar: the forward pass has begun
    overlay_at: float | None = None  # the first overlay: for a volume, the middle slice's preliminary one
    overlay_key: str = ""  # the threshold view's "pictures_key": "<sha256 of the file>:<slice>:<tta>:<preliminary>"
    final_at: float | None = None  # the overlay of the finished result
    errors: list[str] = field(default_factory=list)  # the page's error messages
    finished_at: float | None = None
    kinds: collections.Counter[str] = field(default_factory=collections.Counter)
    warnings: list[str] = field(default_factory=list)


def widget_key(element_id: str) -> str | None:
    """The user key in a widget's element id: Streamlit builds them as ``$$ID-<hex digest>-<key>`` (the key
    "None" when the widget has none)."""
    if not element_id.startswith("$$ID-"):
        return None
    key = element_id.split("-", 2)[2]
    return None if key == "None" else key


def element_id(element: Element) -> str:
    kind = element.WhichOneof("type")
    proto = getattr(element, kind)
    return proto.id if "id" in proto.DESCRIPTOR.fields_by_name else ""


def check_overlay(element: Element) -> tuple[str, bool]:
    """The threshold view must carry its pictures (the overlay caption, the slice, the packed masks, the heat map);
    returns its ``pictures_key``, which names the file it was computed from, and whether it is a volume's
    preliminary overlay (the middle slice while the others are being segmented)."""
    data = json.loads(element.bidi_component.json or "{}")
    pictures = [data.get(name) or "" for name in ("image_url", "masks_url", "heat_url")]
    caption = str(data.get("overlay_caption", ""))
    if not (caption.startswith(OVERLAY_CAPTION) or caption.startswith(PRELIMINARY_CAPTION)) or not all(
            picture.startswith("data:image/png;base64,") and len(picture) > 100 for picture in pictures):
        raise SessionError(f"the threshold view arrived without its pictures: keys {sorted(data)}")
    return str(data.get("pictures_key", "")), bool(data.get("preliminary"))


class StreamlitClient:
    """One browser tab's worth of Streamlit protocol: a session over ``/_stcore/stream`` and the upload endpoint.

    The widget values this client chose are sent with every later rerun, as the browser's widget manager sends
    every widget's current value (the server would keep a value a rerun leaves out, but the browser never does).
    """

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self.session_id = ""
        self.widget_ids: dict[str, str] = {}  # user key -> element id, from the elements received
        self.widget_states: dict[str, WidgetState] = {}  # element id -> the value this client chose
        self._http = httpx.AsyncClient(base_url=url, trust_env=False, timeout=timeout)
        self._xsrf = ""
        self._ws: ClientConnection | None = None
        self._file_urls: dict[str, FileURLsResponse] = {}  # request id -> answer
        self.auto_reruns: dict[str, float] = {}  # fragment id -> seconds between its reruns (st.fragment run_every)

    async def connect(self) -> None:
        """Get the XSRF cookie (as the page load does), then open the websocket with it, as the browser does."""
        response = await self._http.get("/_stcore/health")
        response.raise_for_status()
        for header in response.headers.get_list("set-cookie"):
            name, _, rest = header.partition("=")
            if name.strip() == XSRF_COOKIE:
                self._xsrf = rest.split(";", 1)[0]
        if not self._xsrf:
            raise SessionError("the health check set no XSRF cookie")
        # The subprotocol header carries [subprotocol, XSRF token, session to resume]; a new tab resumes none.
        self._ws = await connect(
            self.url.replace("http://", "ws://") + "/_stcore/stream", subprotocols=["streamlit", self._xsrf],
            origin=self.url, additional_headers={"Cookie": f"{XSRF_COOKIE}={self._xsrf}"}, proxy=None,
            max_size=None, open_timeout=self.timeout, ping_interval=None)

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        await self._http.aclose()

    async def _send(self, message: BackMsg) -> None:
        assert self._ws is not None, "connect() first"
        await self._ws.send(message.SerializeToString())

    async def _receive(self, deadline: float) -> ForwardMsg:
        assert self._ws is not None, "connect() first"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise SessionError(f"no answer within {self.timeout:.0f} s")
        try:
            raw = await asyncio.wait_for(self._ws.recv(), remaining)
        except TimeoutError:
            raise SessionError(f"no answer within {self.timeout:.0f} s") from None
        message = ForwardMsg()
        message.ParseFromString(raw)
        return message

    async def rerun(self, errors_allowed: bool = False) -> Run:
        """Run the main page (empty query string and page hash) with this client's widget values; wait for the end
        (an error message on the page fails the session unless ``errors_allowed``)."""
        message = BackMsg()
        message.rerun_script.query_string = ""
        message.rerun_script.page_script_hash = ""
        message.rerun_script.widget_states.widgets.extend(self.widget_states.values())
        await self._send(message)
        return await self._read_run(errors_allowed)

    async def fragment_rerun(self, fragment_id: str) -> Run:
        """Rerun one fragment, as the browser does on a ``run_every`` timer; wait for the end (a fragment that
        calls st.rerun() ends in the whole page's run)."""
        message = BackMsg()
        message.rerun_script.fragment_id = fragment_id
        message.rerun_script.is_auto_rerun = True
        message.rerun_script.widget_states.widgets.extend(self.widget_states.values())
        await self._send(message)
        return await self._read_run()

    async def _read_run(self, errors_allowed: bool = False) -> Run:
        run, deadline = Run(), time.monotonic() + self.timeout
        while run.finished_at is None:
            self._dispatch(await self._receive(deadline), run)
        if run.errors and not errors_allowed:
            raise SessionError(f"error on the page: {run.errors[0]}")
        return run

    def _dispatch(self, message: ForwardMsg, run: Run) -> None:
        """Take what matters from one message; messages about the session's status and the page are skipped."""
        kind = message.WhichOneof("type")
        if kind == "new_session":
            self.session_id = message.new_session.initialize.session_id or self.session_id
            run.started_at = run.started_at or time.perf_counter()
        elif kind == "delta" and message.delta.WhichOneof("type") == "new_element":
            self._take_element(message.delta.new_element, run)
        elif kind == "session_event" and message.session_event.HasField("script_compilation_exception"):
            raise SessionError(f"script error: {message.session_event.script_compilation_exception.message}")
        elif kind in ("page_not_found", "auth_redirect"):
            raise SessionError(f"unexpected {kind}")
        elif kind == "auto_rerun":
            self.auto_reruns[message.auto_rerun.fragment_id] = message.auto_rerun.interval
        elif kind == "stop_auto_rerun":
            self.auto_reruns.clear()
        elif kind == "file_urls_response":
            self._file_urls[message.file_urls_response.response_id] = message.file_urls_response
        elif kind == "script_finished" and message.script_finished != ForwardMsg.FINISHED_EARLY_FOR_RERUN:
            if message.script_finished == ForwardMsg.FINISHED_WITH_COMPILE_ERROR:
                raise SessionError("the script did not compile")
            run.finished_at = time.perf_counter()

    def _take_element(self, element: Element, run: Run) -> None:
        kind = element.WhichOneof("type")
        run.kinds[kind] += 1
        if kind == "progress" and run.segmenting_at is None:
            run.segmenting_at = time.perf_counter()
        if kind == "exception":
            raise SessionError(f"exception on the page: {element.exception.type}: {element.exception.message}")
        if kind == "alert" and element.alert.format == element.alert.ERROR:
            run.errors.append(element.alert.body)
        if kind == "alert" and element.alert.format == element.alert.WARNING:
            run.warnings.append(element.alert.body)
        if kind == "bidi_component" and element.bidi_component.component_name.endswith(OVERLAY_COMPONENT):
            pictures_key, preliminary = check_overlay(element)
            if run.overlay_at is None:
                run.overlay_at, run.overlay_key = time.perf_counter(), pictures_key
            if not preliminary and run.final_at is None:
                run.final_at = time.perf_counter()
        key = widget_key(element_id(element))
        if key is not None:
            self.widget_ids[key] = element_id(element)

    def set_widget(self, key: str, state: WidgetState) -> None:
        if key not in self.widget_ids:
            raise SessionError(f"no widget with key {key!r} on the page (have {sorted(self.widget_ids)})")
        state.id = self.widget_ids[key]
        self.widget_states[state.id] = state

    async def request_upload_url(self, filename: str) -> FileURLs:
        """Ask for an upload URL over the websocket (BackMsg.file_urls_request -> ForwardMsg.file_urls_response)."""
        message = BackMsg()
        request_id = str(uuid.uuid4())
        message.file_urls_request.request_id = request_id
        message.file_urls_request.session_id = self.session_id
        message.file_urls_request.file_names.append(filename)
        await self._send(message)
        deadline = time.monotonic() + self.timeout
        while request_id not in self._file_urls:  # after a run come messages on the session's status: skipped
            self._dispatch(await self._receive(deadline), Run())
        response = self._file_urls.pop(request_id)
        if response.error_msg:
            raise SessionError(f"upload refused: {response.error_msg}")
        return response.file_urls[0]

    async def put_file(self, urls: FileURLs, scan: Scan) -> None:
        """PUT the file as the browser does: one multipart field "file", with the XSRF cookie and header."""
        content_type = mimetypes.guess_type(scan.name)[0] or "application/octet-stream"
        response = await self._http.put(
            urls.upload_url, files={"file": (scan.name, scan.data, content_type)},
            headers={"Cookie": f"{XSRF_COOKIE}={self._xsrf}", "X-Xsrftoken": self._xsrf, "Origin": self.url})
        if response.status_code != 204:
            raise SessionError(f"upload PUT answered {response.status_code}: {response.text[:200]}")


# --- a student ---------------------------------------------------------------------------------------------------


@dataclass
class Student:
    scan: Scan
    client: StreamlitClient
    sent_at: float = 0.0
    started_s: float = 0.0  # these four from sent_at: the script began, segmenting began, overlay, run's end
    segmenting_s: float | None = None
    overlay_s: float = 0.0
    final_s: float = 0.0  # a volume's final overlay (its first is the middle slice's preliminary one)
    finished_s: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.scan.name


async def open_upload_page(student: Student) -> None:
    """Load the Segment page and choose "Upload a file", as a student does before picking a file."""
    client = student.client
    await client.connect()
    await client.rerun()
    client.set_widget("source", WidgetState(string_value=UPLOAD_CHOICE))  # a radio's value is its option's text
    run = await client.rerun()
    if run.kinds["file_uploader"] == 0 or "upload" not in client.widget_ids:
        raise SessionError(f"no file uploader after choosing {UPLOAD_CHOICE!r}: {dict(run.kinds)}")


async def upload(student: Student) -> None:
    """Upload the scan and wait for the overlay; times from the request for an upload URL."""
    client, scan = student.client, student.scan
    student.sent_at = time.perf_counter()
    urls = await client.request_upload_url(scan.name)
    await client.put_file(urls, scan)
    info = UploadedFileInfo(file_id=urls.file_id, name=scan.name, size=len(scan.data), file_urls=urls)
    state = WidgetState()
    state.file_uploader_state_value.uploaded_file_info.append(info)
    client.set_widget("upload", state)  # sent beside the radio's value, which must stay on "Upload a file"
    run = await client.rerun(errors_allowed=scan.slices == 0)
    if scan.slices == 0:  # a hostile file: refused with a message, nothing segmented, the page still usable
        if not run.errors or run.overlay_at is not None or run.kinds["file_uploader"] == 0:
            raise SessionError(f"{scan.name}: a hostile file was not refused with a message: {dict(run.kinds)}")
        student.overlay_s = student.final_s = student.finished_s = run.finished_at - student.sent_at
        student.warnings = run.errors
        return
    # A volume is segmented in the background: its page polls (a fragment on a timer) until the result is final.
    deadline = time.monotonic() + client.timeout
    while run.final_at is None:
        if not client.auto_reruns or time.monotonic() > deadline:
            raise SessionError(f"{scan.name}: no final overlay and nothing polling for it: {dict(run.kinds)}")
        fragment_id, interval = next(iter(client.auto_reruns.items()))
        await asyncio.sleep(interval)
        polled = await client.fragment_rerun(fragment_id)
        if run.overlay_at is None and polled.overlay_at is not None:
            run.overlay_at, run.overlay_key = polled.overlay_at, polled.overlay_key
        run.final_at, run.finished_at = polled.final_at, polled.finished_at
        run.warnings += polled.warnings
    if run.overlay_at is None:
        raise SessionError(f"{scan.name}: the run ended without an overlay: {dict(run.kinds)}")
    if not run.overlay_key.startswith(hashlib.sha256(scan.data).hexdigest() + ":"):
        raise SessionError(f"{scan.name}: the overlay shown is another file's ({run.overlay_key})")
    if run.kinds["file_uploader"] == 0:
        raise SessionError(f"{scan.name}: the upload run lost the uploader (the radio left {UPLOAD_CHOICE!r})")
    student.started_s = (run.started_at or run.overlay_at) - student.sent_at
    student.segmenting_s = None if run.segmenting_at is None else run.segmenting_at - student.sent_at
    student.overlay_s = run.overlay_at - student.sent_at
    student.final_s = run.final_at - student.sent_at
    student.finished_s = run.finished_at - student.sent_at
    student.warnings = run.warnings


async def each(students: list, step: Callable[[Any], Awaitable[None]]) -> None:
    """Run ``step`` for every student at once; name every student that failed, then fail."""
    results = await asyncio.gather(*(step(student) for student in students), return_exceptions=True)
    failures = [f"{student.name}: {type(result).__name__}: {result}"
                for student, result in zip(students, results, strict=True) if isinstance(result, BaseException)]
    if failures:
        raise SessionError(f"{len(failures)} of {len(students)} sessions failed:\n  " + "\n  ".join(failures))


# --- measuring the server ----------------------------------------------------------------------------------------


class MemorySampler:
    """The server's resident memory every 0.2 s, from a thread (the event loop may be busy parsing messages)."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.samples.append(memory_mb(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown CPU")
    return f"{model}, {os.cpu_count()} cores (load average {os.getloadavg()[0]:.1f} at the start)"


# --- a wave and its report ---------------------------------------------------------------------------------------


@dataclass
class Wave:
    students: list[Student]
    open_s: float  # until every student had the page open with "Upload a file" chosen
    server_cpu_s: float
    client_cpu_s: float
    upload_spread_s: float


async def run_wave(url: str, pid: int, scans: list[Scan], timeout: float) -> Wave:
    """Every student opens the page; then all upload at once; the sessions are closed afterwards."""
    students = [Student(scan, StreamlitClient(url, timeout)) for scan in scans]
    client_cpu, started = time.process_time(), time.perf_counter()
    try:
        await each(students, open_upload_page)
        opened = time.perf_counter() - started
        server_cpu = cpu_seconds(pid)
        await each(students, upload)
        server_cpu = cpu_seconds(pid) - server_cpu
    finally:
        await asyncio.gather(*(student.client.close() for student in students), return_exceptions=True)
    sent = [student.sent_at for student in students]
    return Wave(students, opened, server_cpu, time.process_time() - client_cpu, max(sent) - min(sent))


def details(wave: Wave) -> None:
    """One line a student, by time to overlay: where the wait went."""
    print("  scan                 slices  script began  segmenting began  overlay  run's end  (s after the upload; "
          "'-': the progress bar was replaced before it was sent)")
    for student in sorted(wave.students, key=lambda each_one: each_one.overlay_s):
        segmenting = "-" if student.segmenting_s is None else f"{student.segmenting_s:.1f}"
        print(f"  {student.scan.name:20} {student.scan.slices:6}  {student.started_s:12.1f}  {segmenting:>16}  "
              f"{student.overlay_s:7.1f}  {student.finished_s:9.1f}")


def report(number: int, wave: Wave, target: float) -> None:
    hostile = [student for student in wave.students if student.scan.slices == 0]
    if hostile:
        print(f"wave {number}: {len(hostile)} hostile uploads ({hostile[0].scan.name}: {len(hostile[0].scan.data)} "
              f"bytes declaring hundreds of frames) refused after {max(s.finished_s for s in hostile):.1f} s at the "
              f"slowest: {hostile[0].warnings[0]!r}")
    wave = replace(wave, students=[student for student in wave.students if student.scan.slices > 0])
    overlay = np.array([student.overlay_s for student in wave.students])
    finished = np.array([student.finished_s for student in wave.students])
    volumes = sum(student.scan.slices > 1 for student in wave.students)
    slices = sum(student.scan.slices for student in wave.students)
    in_time = int((overlay <= target).sum())
    warned = sum(bool(student.warnings) for student in wave.students)
    print(f"wave {number}: {len(overlay)} sessions, each its own scan ({volumes} of them a whole volume; {slices} "
          f"slices to segment in all)")
    print(f"  all had the page open with {UPLOAD_CHOICE!r} chosen after {wave.open_s:.1f} s; then they sent their "
          f"uploads within {wave.upload_spread_s:.2f} s of each other")
    print(f"  time to first overlay: slowest {overlay.max():.1f} s, median {np.median(overlay):.1f} s, "
          f"p90 {np.percentile(overlay, 90):.1f} s, fastest {overlay.min():.1f} s")
    print(f"  time to the run's end: slowest {finished.max():.1f} s, median {np.median(finished):.1f} s, "
          f"p90 {np.percentile(finished, 90):.1f} s")
    for kind, chosen in (("slices", [s for s in wave.students if s.scan.slices == 1]),
                         ("volumes", [s for s in wave.students if s.scan.slices > 1])):
        if chosen:
            first = np.array([student.overlay_s for student in chosen])
            final = np.array([student.final_s for student in chosen])
            print(f"  {kind} ({len(chosen)}): first overlay median {np.median(first):.1f} s, slowest "
                  f"{first.max():.1f} s; final overlay median {np.median(final):.1f} s, slowest {final.max():.1f} s")
    print(f"  all {len(overlay)} sessions showed their overlay, none an error; {warned} showed an input warning")
    print(f"  server CPU during the uploads {wave.server_cpu_s:.1f} s; these clients' own CPU for the whole wave "
          f"(connect, page loads, uploads) {wave.client_cpu_s:.1f} s")
    cores = os.cpu_count() or 1
    print(f"  students per core: {in_time} of {len(overlay)} sessions had their overlay within {target:.0f} s, on "
          f"{cores} cores = {in_time / cores:.1f} per core")


async def class_load_test(args: argparse.Namespace) -> None:
    print(f"machine: {machine()}")
    waves = [make_scans(args.sessions, wave, args.volume_every, args.volume_kind, args.hostile)
             for wave in range(args.waves)]
    if len({scan.data for scans in waves for scan in scans}) != args.sessions * args.waves:
        raise ValueError("two students would upload the same scan")
    environment = dict(setting.split("=", 1) for setting in args.server_env)
    server_log = Path(tempfile.mkdtemp()) / "server.log"
    with streamlit_server(warm=True, env=environment, log=server_log) as (url, process), \
            MemorySampler(process.pid) as memory:
        print(f"server {url}: mriseg serve (warm), settings {' '.join(args.server_env) or 'as users run it'}; "
              f"{memory_mb(process.pid):.0f} MiB resident before any session, VmHWM so far (the warm-up) "
              f"{memory_mb(process.pid, 'VmHWM'):.0f} MiB")
        for number, scans in enumerate(waves, 1):
            first_sample = len(memory.samples)
            try:
                result = await run_wave(url, process.pid, scans, args.timeout)
            except SessionError:
                last_lines = server_log.read_text(errors="replace").splitlines()[-60:]
                print("server output, last lines:\n  " + "\n  ".join(last_lines), file=sys.stderr)
                raise
            report(number, result, args.target)
            if args.details:
                details(result)
            await asyncio.sleep(3)  # the closed sessions' clean-up, before memory is read
            print(f"  server resident: peak sampled during the wave {max(memory.samples[first_sample:]):.0f} MiB, "
                  f"3 s after it {memory_mb(process.pid):.0f} MiB")
        print(f"server memory: peak sampled resident {max(memory.samples):.0f} MiB, VmHWM "
              f"{memory_mb(process.pid, 'VmHWM'):.0f} MiB")


# --- a class drawing together (--draw) ----------------------------------------------------------------------------


class PageClient(StreamlitClient):
    """A client on one page of the app with a query string, following the query parameters the app sets (as the
    browser's address bar does)."""

    def __init__(self, url: str, timeout: float, page: str, query: str) -> None:
        super().__init__(url, timeout)
        self.page, self.query = page, query

    async def rerun(self) -> Run:
        message = BackMsg()
        message.rerun_script.query_string = self.query
        message.rerun_script.page_name = self.page
        message.rerun_script.widget_states.widgets.extend(self.widget_states.values())
        await self._send(message)
        self._triggers_sent()
        return await self._read_run()

    def _triggers_sent(self) -> None:
        """A button press or a component's event is sent once, as the browser does; values stay."""
        for widget_id, state in list(self.widget_states.items()):
            if state.WhichOneof("value") in ("trigger_value", "json_trigger_value"):
                del self.widget_states[widget_id]

    def _dispatch(self, message: ForwardMsg, run: Run) -> None:
        if message.WhichOneof("type") == "page_info_changed":
            self.query = message.page_info_changed.query_string
        super()._dispatch(message, run)


@dataclass
class Drawer:
    number: int
    client: PageClient
    sent_at: float = 0.0
    answered_s: float = 0.0

    @property
    def name(self) -> str:
        return f"student {self.number}"


def square_outline(number: int) -> list[list[list[float]]]:
    """A different square for every student, around the large sample's tumour."""
    left, top = 80 + 3 * (number % 10), 80 + 3 * (number // 10)
    return [[[left, top], [left + 80, top], [left + 80, top + 80], [left, top + 80]]]


async def join_class(drawer: Drawer) -> None:
    """Open the class link, type a nickname, press Join class: the drawing surface must come back."""
    client = drawer.client
    await client.connect()
    await client.rerun()
    client.set_widget("nickname", WidgetState(string_value=f"student {drawer.number}"))
    client.set_widget("join_class", WidgetState(trigger_value=True))
    await client.rerun()
    if "student=" not in client.query:
        raise SessionError(f"student {drawer.number} did not join: query {client.query!r}")
    if not any(key.startswith("outline_") for key in client.widget_ids):
        await client.rerun()  # the join's own run ends with st.rerun(): the drawing comes in the next
    if not any(key.startswith("outline_") for key in client.widget_ids):
        raise SessionError(f"student {drawer.number}: no drawing surface after joining")


async def submit_outline(drawer: Drawer) -> None:
    """Press Submit outline with this student's square, as the drawing component sends it."""
    from streamlit.components.v2.bidi_component.main import _make_trigger_id

    client = drawer.client
    key = next(key for key in client.widget_ids if key.startswith("outline_"))
    payload = [{"event": "outline", "value": {"shapes": square_outline(drawer.number), "seconds": 20.0}}]
    # The browser sends the component's (empty) state beside its event; the page reads the event through it.
    client.set_widget(key, WidgetState(json_value="{}"))
    trigger = WidgetState(json_trigger_value=json.dumps(payload))
    trigger.id = _make_trigger_id(client.widget_ids[key], "events")
    client.widget_states[trigger.id] = trigger
    drawer.sent_at = time.perf_counter()
    await client.rerun()
    drawer.answered_s = time.perf_counter() - drawer.sent_at


async def teacher_sees(url: str, query: str, count: int, timeout: float, ready: asyncio.Event) -> float:
    """A real browser on the teacher's view; sets ``ready`` once it shows "0 submitted", returns the perf_counter
    moment it showed "<count> submitted"."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_FLAGS))
        page = await browser.new_page(viewport={"width": 1920, "height": 1080})
        await page.goto(f"{url}/class?{query}")
        await page.get_by_text("0 submitted", exact=True).wait_for(timeout=timeout * 1000)
        ready.set()
        await page.get_by_text(f"{count} submitted", exact=True).wait_for(timeout=timeout * 1000)
        seen = time.perf_counter()
        await browser.close()
    return seen


async def drawing_wave(url: str, pid: int, database: Path, students: int, timeout: float) -> None:
    """The teacher's view open in Chromium; ``students`` light clients join, then all submit at once."""
    from mriseg.app import classroom

    large = max((e for e in sample_index() if e["category"] == "large"), key=lambda e: e["tumour_pixels"])
    case = load_sample(large)
    # The wave measures storing and counting outlines, not scores: the expert's mask stands in for the model's.
    slide = classroom.Slide(case.volume.pixels[0], case.truth[0], case.truth[0])
    code, token = classroom.start_class(large["image"], 0, 0.5, slide, database)
    ready = asyncio.Event()
    teacher = asyncio.create_task(teacher_sees(url, f"code={code}&teacher={token}", students, timeout, ready))
    await ready.wait()
    drawers = [Drawer(number, PageClient(url, timeout, "class", f"code={code}")) for number in range(students)]
    try:
        started = time.perf_counter()
        await each(drawers, join_class)
        joined_s = time.perf_counter() - started
        server_cpu = cpu_seconds(pid)
        await each(drawers, submit_outline)
        server_cpu = cpu_seconds(pid) - server_cpu
        last_stored = max(drawer.sent_at + drawer.answered_s for drawer in drawers)
        seen = await teacher
    finally:
        await asyncio.gather(*(drawer.client.close() for drawer in drawers), return_exceptions=True)
    stored = classroom.counts(code, database)
    answered = np.array([drawer.answered_s for drawer in drawers])
    sent = [drawer.sent_at for drawer in drawers]
    print(f"drawing class: {students} students joined in {joined_s:.1f} s; then all pressed Submit outline within "
          f"{max(sent) - min(sent):.2f} s of each other")
    print(f"  stored: {stored[1]} of {students} outlines ({stored[0]} students joined)")
    print(f"  each submission answered (rasterised, stored, page rerun): slowest {answered.max():.2f} s, median "
          f"{np.median(answered):.2f} s; server CPU for the wave {server_cpu:.1f} s")
    print(f"  the teacher's view (Chromium, refreshed twice a second) showed \"{students} submitted\" "
          f"{seen - max(sent):.2f} s after the last press, {seen - last_stored:.2f} s after the last was stored")
    if stored != (students, students):
        raise SessionError(f"only {stored[1]} of {students} outlines stored")


async def class_drawing_test(args: argparse.Namespace) -> None:
    print(f"machine: {machine()}")
    database = Path(tempfile.mkdtemp()) / "classes.sqlite"
    environment = {"MRISEG_CLASS_DB": str(database)}
    server_log = database.parent / "server.log"
    with streamlit_server(warm=True, env=environment, log=server_log) as (url, process):
        try:
            await drawing_wave(url, process.pid, database, args.sessions, args.timeout)
        except SessionError:
            last_lines = server_log.read_text(errors="replace").splitlines()[-40:]
            print("server output, last lines:\n  " + "\n  ".join(last_lines), file=sys.stderr)
            raise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draw", action="store_true",
                        help="a class drawing together instead: the teacher's view in Chromium, --sessions students "
                             "join the class page and all submit an outline at once")
    parser.add_argument("--sessions", type=int, default=30, help="students per wave")
    parser.add_argument("--waves", type=int, default=1, help="waves of new students (2: memory stays bounded?)")
    parser.add_argument("--volume-every", type=int, default=10,
                        help="every Nth student uploads a 20-slice volume (0: slices only)")
    parser.add_argument("--volume-kind", choices=("tiff", "brats"), default="tiff",
                        help="the volume students upload: the gallery's 20-slice TIFF, or a BraTS-size NIfTI "
                             "(155x240x240); --volume-every 3 --volume-kind brats: 10 of 30 students upload one")
    parser.add_argument("--hostile", type=int, default=0,
                        help="this many students upload a hostile DICOM (under 1 kB, declaring hundreds of frames) "
                             "instead, which must be refused with a message while the others are served")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds a session may wait for one answer")
    parser.add_argument("--target", type=float, default=10.0, help="'students per core' counts overlays within it")
    parser.add_argument("--details", action="store_true", help="print each student's timeline")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment for the server, e.g. STREAMLIT_SERVER_FILE_WATCHER_TYPE=none (repeatable)")
    args = parser.parse_args()
    try:
        asyncio.run(class_drawing_test(args) if args.draw else class_load_test(args))
    except SessionError as error:
        sys.exit(f"FAILED: {error}")


if __name__ == "__main__":
    main()
