"""mriseg: brain tumour segmentation in MRI for the classroom. Run with ``streamlit run app.py``."""

import logging

import streamlit as st
from streamlit.navigation.page import StreamlitPage

from mriseg.app import access, classroom, webapp
from mriseg.errors import InputError

log = logging.getLogger("mriseg")

st.set_page_config(page_title="mriseg: brain MRI tumour segmentation", page_icon=":material/neurology:", layout="wide")


def show(page: StreamlitPage) -> None:
    """The sidebar, any notice about the weights, then the page; a failure becomes one clear message on the page.

    Visitors never see Streamlit's own error box (it tells a student nothing and invites pasting the error
    elsewhere); tracebacks go to the server's log. st.stop, st.rerun and st.switch_page raise exceptions that
    derive from BaseException, not Exception, so they pass through untouched.
    """
    try:
        model = webapp.load_model(st.session_state.get("device", "auto"))
    except Exception as error:
        report(error, "The model cannot be loaded, so the app cannot segment anything")
        return
    if student and page.url_path != CLASS_PATH:
        # The other pages show the model's outline and the expert's mask: the answer, before the teacher reveals it.
        st.info("You are in a class: your class page is the one to use until your teacher ends the class.",
                icon=":material/groups:")
        st.page_link(CLASS_PAGE, label="Back to your class", icon=":material/arrow_back:",
                     query_params={name: st.query_params[name] for name in ("code", "student")})
        return
    try:
        webapp.sidebar(page.title)
        if model.notice:
            st.warning(model.notice, icon=":material/gpp_maybe:")
            st.sidebar.warning(model.notice, icon=":material/gpp_maybe:")
        page.run()
        webapp.write_link()  # again after the page: it may have set defaults (a volume's first slice)
    except Exception as error:
        report(error, "Something went wrong on this page")


def report(error: Exception, what: str) -> None:
    """One st.error for a failure: mriseg's own message when it has one (it names the file and what to do),
    else the exception's first line, with the traceback in the log."""
    if isinstance(error, InputError):
        log.error("%s: %s", what, error)
        st.error(f"{what}: {error}", icon=":material/error:")
        return
    log.exception(what)
    summary = (str(error).splitlines() or [""])[0][:200]
    st.error(f"{what} ({type(error).__name__}: {summary}). The details are in the server's log; reload the page "
             "or choose another scan.", icon=":material/error:")


CLASS_PAGE, CLASS_PATH = "pages/classroom.py", "class"
locked = not access.unlocked()
# A student in a running class sees only the class page (its link carries ?code=…&student=…).
student = not locked and classroom.in_running_class(st.query_params.get("student"))
if not locked:  # before the navigation: a link may turn presenter mode on, which moves the page list
    webapp.restore_from_link()
# URL paths differ from the file names on purpose: Streamlit's testing harness would otherwise mistake these
# pages for the legacy pages/ directory and run them without this entry script (and its sidebar).
# In presenter mode the sidebar is hidden and the pages are listed along the top: one click away on a projector.
# Behind a class password the navigation is still declared (so a deep link survives signing in, and Streamlit never
# falls back to listing pages/ itself) but hidden, and no page runs.
navigation = st.navigation([
    st.Page("pages/segment.py", title="Segment", icon=":material/neurology:", url_path="scan", default=True),
    st.Page("pages/compare.py", title="Compare with ground truth", icon=":material/compare:", url_path="ground-truth"),
    st.Page("pages/metrics.py", title="Metrics", icon=":material/monitoring:", url_path="model-metrics"),
    st.Page("pages/how_it_works.py", title="How it works", icon=":material/schema:", url_path="inside-the-unet"),
    st.Page(CLASS_PAGE, title="Class", icon=":material/groups:", url_path=CLASS_PATH),
], position="hidden" if locked or student else "top" if st.session_state.get("presenter") else "sidebar")
if locked:
    access.password_form()
else:
    show(navigation)
