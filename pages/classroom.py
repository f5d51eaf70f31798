"""Class page: the teacher starts a class on one slice; students join with a code and a nickname, outline the
tumour on their own screens, and see how they did once the teacher reveals the expert's mask and the model.

Who is who lives in the URL (``?code=CODE&teacher=TOKEN`` or ``&student=TOKEN``) and in the database, not in the
session: a reload, a dropped connection or a restart of the server brings everyone back where they were.
"""

from urllib.parse import urlsplit

import numpy as np
import plotly.graph_objects as go
import segno
import streamlit as st

from mriseg.app import classroom as store
from mriseg.app import webapp
from mriseg.app.case import Case, load_sample, sample_index
from mriseg.app.drawing import drawing_surface
from mriseg.app.visualize import display_image, error_map, overlay, style_chart, to_png
from mriseg.errors import InputError

view = webapp.context()
params = st.query_params


@st.cache_resource(show_spinner=False, max_entries=16)
def sample_case(name: str) -> Case:
    return load_sample(next(entry for entry in sample_index() if entry["image"] == name))


def class_slide(case: Case) -> tuple[int, store.Slide]:
    """The slice the class will outline, with its expert mask and the model's at the teacher's threshold: for a
    volume the slice the teacher is showing on the Segment page, else the largest tumour (the expert's, or the
    model's for a scan without a mask)."""
    prediction = webapp.predict(view.model, case, tta=view.tta)
    model = webapp.current_mask(view.model, prediction, view.threshold)
    index = 0
    if case.volume.n_slices > 1:
        shown = st.session_state.get(webapp.KEPT, {}).get("slice")  # the Segment page's slider keeps it there
        largest = case.truth if case.truth is not None else model
        index = int(shown) - 1 if webapp.current_case() is case and shown else int(
            largest.reshape(len(largest), -1).sum(axis=1).argmax())
    expert = None if case.truth is None else case.truth[index]
    return index, store.Slide(case.volume.pixels[index], expert, model[index], case.volume.n_slices)


def open_class(case: Case) -> None:
    """Start a class on ``case`` (a gallery sample or the teacher's upload) as this browser's teacher."""
    index, slide = class_slide(case)
    code, token = store.start_class(case.name, index, view.threshold, slide)
    st.query_params.from_dict({"code": code, "teacher": token})


def join_link(code: str) -> str:
    """The address students open: this page of this server, with the code filled in."""
    url = urlsplit(st.context.url or "")
    base = url.path.rsplit("/", 1)[0] if url.path else ""
    origin = f"{url.scheme}://{url.netloc}" if url.netloc else ""
    return f"{origin}{base}/class?code={code}"


def join_form() -> None:
    """Join code and nickname for students; a class to start for the teacher."""
    if "class_results" in st.session_state:
        results_downloads()
    st.title("Outline it yourself")
    st.caption("Your teacher shows a join code. Type it with a nickname (nothing else about you is asked), outline "
               "the tumour on the slice, and compare your outline with the expert's, the model's and the class's.")
    with st.form("join"):
        code = st.text_input("Join code", value=params.get("code", ""), max_chars=12, key="join_code")
        nickname = st.text_input("Nickname", max_chars=40, key="nickname")
        if st.form_submit_button("Join class", type="primary", key="join_class"):
            try:
                given, token = store.join(code, nickname)
            except InputError as error:
                st.error(str(error), icon=":material/block:")
            else:
                st.session_state["renamed_to"] = given if given != store.clean_nickname(nickname) else None
                st.query_params.from_dict({"code": store.normalise_code(code), "student": token})
                st.rerun()
    teacher_start()


def teacher_start() -> None:
    """Start a class on the open scan (a gallery sample or an upload), or on a gallery sample chosen here."""
    names = [entry["image"] for entry in sample_index() if entry["category"] != "tumour-free"]
    case = webapp.current_case()
    if case is not None and case.name not in names:
        names.insert(0, case.name)  # the teacher's upload
    default = names.index(case.name) if case is not None and case.name in names else 0
    with st.expander("Teachers: start a class", expanded=bool(st.session_state.get("presenter"))):
        name = st.selectbox("Case", names, index=default)
        if st.button("Start a class", icon=":material/groups:", type="primary"):
            open_class(sample_case(name) if case is None or case.name != name else case)
            st.rerun()


def results_downloads() -> None:
    code, csv_text, zipped = st.session_state["class_results"]
    st.success(f"Class {code} ended and deleted from the server. Its results are below, once.", icon=":material/done:")
    st.download_button("Download class results", csv_text, file_name=f"class-{code}.csv", mime="text/csv",
                       icon=":material/download:", type="primary", on_click="ignore")
    st.download_button("Download outlines (PNG masks)", zipped, file_name=f"class-{code}-outlines.zip",
                       mime="application/zip", icon=":material/download:", on_click="ignore")


# --- the teacher ---------------------------------------------------------------------------------------------------


def end_class(info: store.ClassInfo, token: str) -> None:
    """Results of every slice the class drew (CSV and masks) kept for download; then the class is deleted."""
    rows = store.submissions(info.code, current_only=False)
    csv_text = store.results_csv(rows, store.slides(info.code))
    st.session_state["class_results"] = (info.code, csv_text, store.masks_zip(rows))
    store.end_class(info.code, token)
    st.query_params.clear()


def next_class_case(info: store.ClassInfo, token: str) -> None:
    names = [entry["image"] for entry in sample_index() if entry["category"] != "tumour-free"]
    name = names[(names.index(info.case_name) + 1) % len(names)] if info.case_name in names else names[0]
    index, slide = class_slide(sample_case(name))
    store.next_case(info.code, token, name, index, slide)


def teacher_view(info: store.ClassInfo, token: str) -> None:
    """Join code, link and QR code on the left, the class's picture and numbers beside: one projector screen."""
    link = join_link(info.code)
    join_column, live_column = st.columns([1, 3])
    with join_column:
        st.markdown(f"## Join code **{info.code}**")
        st.markdown(f"Open [{link}]({link}) and type the code with a nickname.")
        st.image(segno.make(link, error="m").svg_data_uri(scale=6, border=2), width=220,
                 caption="Scan to open the class")
        slices = store.current_slide(info).slices
        where = f", slice {info.slice_index + 1} of {slices}" if slices > 1 else ""
        st.caption(f"Case {info.case_name}{where} · model at threshold {info.threshold:.2f}")
        with st.container(horizontal=True):
            st.button("Next case", icon=":material/skip_next:", on_click=next_class_case, args=(info, token))
            st.button("End class", icon=":material/stop_circle:", on_click=end_class, args=(info, token))
    with live_column:
        teacher_live(info.code, token)


def class_picture(info: store.ClassInfo, slide: store.Slide, rows: list[store.Submission]) -> tuple[bytes, np.ndarray]:
    """The slice with the agreement heat map, the majority outline and whatever the teacher revealed; and counts."""
    image = display_image(slide.pixels)
    counts = store.agreement([row.mask for row in rows], slide.pixels.shape)
    if rows:
        # Red, more opaque where more students agree: one student's stroke is faint, the whole class's is solid.
        fraction = counts / len(rows)
        red = np.array([230, 50, 50], np.float32)
        alpha = (0.75 * fraction)[..., None]
        image = ((1 - alpha) * image + alpha * red).round().astype(np.uint8)
        image = overlay(image, store.majority(counts, len(rows)), "cyan", style="contour")
    if info.expert_revealed and slide.expert is not None:
        image = overlay(image, slide.expert, "yellow", style="contour")
    if info.model_revealed:
        image = overlay(image, slide.model, "magenta", style="contour")
    return to_png(image), counts


def dice_strip(info: store.ClassInfo, slide: store.Slide, rows: list[store.Submission]) -> go.Figure:
    """Each student's Dice against the expert as a dot, the model's and the radiologists' agreement as lines."""
    scores = [store.score(row.mask, slide.expert).dice for row in rows]
    figure = go.Figure(go.Scatter(x=scores, y=[0] * len(rows), mode="markers", text=[row.nickname for row in rows],
                                  marker={"size": 18, "color": "#e63232", "opacity": 0.7}, name="students",
                                  hovertemplate="%{text}: Dice %{x:.3f}<extra></extra>"))
    figure.add_vline(x=store.INTER_RATER_DICE, line_dash="dash", annotation_position="top left",
                     annotation_text=f"two radiologists ≈ {store.INTER_RATER_DICE}")
    if info.model_revealed:
        figure.add_vline(x=store.score(slide.model, slide.expert).dice, line_color="magenta",
                         annotation_text="model", annotation_position="bottom left")
    figure.update_layout(height=220, xaxis={"range": [0, 1], "title": "Dice against the expert"},
                         yaxis={"visible": False}, showlegend=False, margin={"t": 30, "b": 40})
    return style_chart(figure)


@st.fragment(run_every=0.5)
def teacher_live(code: str, token: str) -> None:
    """Counts, agreement and the reveal buttons, redrawn twice a second without reloading the page (the counts
    follow a class submitting at once within a second)."""
    info = store.get_class(code)
    if info is None:
        st.rerun()
    joined, submitted = store.counts(code)
    rows = store.submissions(code)
    slide = store.current_slide(info)
    png, counts = class_picture(info, slide, rows)
    picture, numbers = st.columns(2)  # half of three quarters: the square picture fits a projector's height
    with picture:
        st.image(png, width="stretch", caption="Red: how many students marked each pixel (solid = all); cyan: the "
                 "class's majority outline" + ("; yellow: the expert" if info.expert_revealed else "")
                 + ("; magenta: the model" if info.model_revealed else ""))
    with numbers:
        st.markdown(f"### {joined} joined")
        st.markdown(f"### {submitted} submitted")
        st.caption(f"Most students on one pixel: {int(counts.max())} of {len(rows)}")
        no_expert = slide.expert is None
        with st.container(horizontal=True):
            st.button("Reveal expert mask", disabled=info.expert_revealed or no_expert, on_click=store.reveal,
                      args=(code, token, "expert"))
            st.button("Reveal model", disabled=info.model_revealed, on_click=store.reveal, args=(code, token, "model"))
        if no_expert:
            st.caption("This scan has no expert mask: the class compares with the model and with each other.")
        elif info.expert_revealed and rows:
            st.plotly_chart(dice_strip(info, slide, rows), width="stretch", key="dice_strip")


# --- a student -----------------------------------------------------------------------------------------------------


def take_outline(token: str, shape: tuple[int, int], key: str) -> None:
    """The outline sent by **Submit outline**: rasterised on the slice's grid and stored; a problem is said."""
    outline = st.session_state[key]["outline"]
    try:
        mask = store.rasterise(outline.get("shapes") or [], shape)
        replaced = store.submit(token, mask, float(outline.get("seconds") or 0))
    except InputError as error:
        st.session_state["outline_message"] = ("error", str(error))
        return
    st.session_state["outline_message"] = ("success", "Submitted again: your new outline replaced the first one"
                                           if replaced else "Submitted")


@st.cache_resource(show_spinner=False, max_entries=64)
def slide_picture(code: str, case_name: str, slice_index: int) -> tuple[bytes, tuple[int, int]]:
    """The class's slice as every student's drawing surface shows it, and its grid: read and encoded once, not on
    every student's rerun (a class submitting at once reruns forty pages)."""
    where = (case_name, slice_index)
    slide = store.slides(code, where=where)[where]
    return to_png(display_image(slide.pixels)), slide.pixels.shape


def student_view(info: store.ClassInfo, token: str, nickname: str) -> None:
    if st.session_state.get("renamed_to"):
        st.info(f"That nickname was taken: you are **{st.session_state['renamed_to']}** in this class.")
    st.markdown(f"#### Class {info.code} · you are {nickname}")
    png, shape = slide_picture(info.code, info.case_name, info.slice_index)
    key = f"outline_{info.code}_{info.case_name}_{info.slice_index}".replace(".", "_")
    drawing, result = st.columns([3, 2])
    with drawing:
        drawing_surface(key, png, shape, lambda: take_outline(token, shape, key), stage_height="calc(100vh - 14rem)")
        kind, text = st.session_state.pop("outline_message", (None, None))
        if kind == "error":
            st.error(text, icon=":material/block:")
        elif kind:
            st.success(text, icon=":material/done:")
    with result:
        student_live(info.code, token, (info.case_name, info.slice_index))


@st.fragment(run_every=2)
def student_live(code: str, token: str, shown: tuple[str, int]) -> None:
    """The student's result, shown as soon as the teacher reveals; a new case reloads the page."""
    info = store.get_class(code)
    if info is None or (info.case_name, info.slice_index) != shown:
        st.rerun()
    own = store.own_submission(token)
    if own is None:
        st.info("Draw around the tumour (Freehand: hold and drag; Polygon: tap the corners), then press "
                "**Submit outline**.", icon=":material/draw:")
        return
    if not (info.expert_revealed or info.model_revealed):
        st.info("Outline submitted: wait for the teacher to reveal the expert's mask and the model.",
                icon=":material/hourglass_top:")
        return
    slide = store.current_slide(info)
    for revealed, name, reference in ((info.expert_revealed, "the expert", slide.expert),
                                      (info.model_revealed, "the model", slide.model)):
        if revealed and reference is not None:
            result = store.score(own.mask, reference)
            with st.container(horizontal=True):
                st.metric(f"Dice vs {name}", f"{result.dice:.3f}")
                st.metric(f"IoU vs {name}", f"{result.iou:.3f}")
    expert_shown = info.expert_revealed and slide.expert is not None
    reference, name = (slide.expert, "the expert's mask") if expert_shown else (slide.model, "the model's outline")
    st.image(to_png(error_map(display_image(slide.pixels), own.mask, reference)), width="stretch",
             caption=f"Your outline against {name}: yellow where both mark tumour, magenta where only you do, "
                     "blue where you missed it")


def main() -> None:
    code = store.normalise_code(params.get("code", ""))
    info = store.get_class(code) if code else None
    if info is not None and store.is_teacher(code, params.get("teacher")):
        teacher_view(info, params["teacher"])
        return
    member = store.student(params.get("student", "")) if info is not None else None
    if member is not None and member[0] == code:
        student_view(info, params["student"], member[1])
        return
    if code and info is None and ("teacher" in params or "student" in params):
        st.warning(f"Class {code} has ended (or expired after a day).", icon=":material/event_busy:")
    if st.session_state.pop("class_start_requested", False):
        start_from_toolbar()
        return
    join_form()


def start_from_toolbar() -> None:
    """Presenter mode's **Start a class**: the open scan (a gallery sample or an upload), else the first sample."""
    case = webapp.current_case()
    open_class(case if case is not None else sample_case(sample_index()[0]["image"]))
    st.rerun()


main()
