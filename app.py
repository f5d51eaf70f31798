"""mriseg: brain tumour segmentation in MRI for the classroom. Run with ``streamlit run app.py``."""

import streamlit as st

from mriseg.app import webapp

st.set_page_config(page_title="mriseg: brain MRI tumour segmentation", page_icon=":material/neurology:", layout="wide")

# URL paths differ from the file names on purpose: Streamlit's testing harness would otherwise mistake these
# pages for the legacy pages/ directory and run them without this entry script (and its sidebar).
# In presenter mode the sidebar is hidden and the pages are listed along the top: one click away on a projector.
navigation = st.navigation([
    st.Page("pages/segment.py", title="Segment", icon=":material/neurology:", url_path="scan", default=True),
    st.Page("pages/compare.py", title="Compare with ground truth", icon=":material/compare:", url_path="ground-truth"),
    st.Page("pages/metrics.py", title="Metrics", icon=":material/monitoring:", url_path="model-metrics"),
    st.Page("pages/how_it_works.py", title="How it works", icon=":material/schema:", url_path="inside-the-unet"),
], position="top" if st.session_state.get("presenter") else "sidebar")
webapp.sidebar(navigation.title)
navigation.run()
