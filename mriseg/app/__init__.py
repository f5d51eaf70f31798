"""The Streamlit glue: the shared model and caches, the current case, pictures and the in-browser threshold
view. The pages import from here and from :mod:`mriseg.inference`, never from training.
"""
