"""A link for every view: what is shown (gallery sample, slice, threshold, display settings, uncertainty, presenter
mode) as URL query parameters, read back into a fresh session, and a Copy link button.

The page itself is the URL's path. An uploaded scan cannot travel in a link (the file stays on the server of the
session that received it), so a link to an upload carries everything but the scan.
"""

from __future__ import annotations

import math

import streamlit as st

from mriseg.app.visualize import COLOURS

# The Segment page's display settings and their defaults; a setting left at its default stays out of the link.
DISPLAY_DEFAULTS = {"opacity": 0.45, "colour": "red", "style": "fill"}
STYLES = ("fill", "contour")
THRESHOLD_RANGE = (0.05, 0.95)
# Streamlit's own parameters (embedding the app in another page), passed through untouched.
STREAMLIT_PARAMS = ("embed", "embed_options")
# The class page's own (pages/classroom.py: the join code and who this browser is in the class), kept as they are.
CLASS_PARAMS = ("code", "teacher", "student")
UPLOAD_NOTE = "Your uploaded scan is not in the link; the sample, slice, threshold and settings are."


def parse(params: dict[str, str], samples: list[dict]) -> tuple[dict, list[str]]:
    """The settings a link asks for, checked, and the names of the parameters that were ignored.

    Args:
        params: the URL's query parameters (the last value of each).
        samples: the gallery's index (a sample is named by its image file).

    Returns:
        ({"sample": entry, "slice": 1-based int, "threshold": float, "opacity": float, "colour": str,
        "style": str, "tta": bool, "presenter": bool}, only those given and valid; ignored parameter names).
    """
    settings, ignored = {}, []
    by_name = {entry["image"]: entry for entry in samples}
    for name, value in params.items():
        if name in STREAMLIT_PARAMS or name in CLASS_PARAMS:
            continue
        parsed = _parse_one(name, value, by_name)
        if parsed is None:
            ignored.append(name)
        else:
            settings[name] = parsed
    # A slice only means something for the volume it was taken in.
    slices = settings["sample"].get("slices", 1) if "sample" in settings else 0
    if "slice" in settings and not 1 <= settings["slice"] <= slices:
        del settings["slice"]
        ignored.append("slice")
    return settings, ignored


def _parse_one(name: str, value: str, samples: dict[str, dict]) -> object | None:
    """One parameter's value, or None when the name is unknown or the value unusable."""
    if name == "sample":
        return samples.get(value)
    if name == "slice":
        return int(value) if value.isdigit() else None
    if name in ("threshold", "opacity"):
        number = _number(value)
        low, high = THRESHOLD_RANGE if name == "threshold" else (0.0, 1.0)
        return round(number, 2) if number is not None and low <= number <= high else None
    if name == "colour":
        return value if value in COLOURS else None
    if name == "style":
        return value if value in STYLES else None
    if name in ("tta", "presenter"):
        return {"1": True, "0": False}.get(value)
    return None


def _number(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def ignored_note(ignored: list[str]) -> str | None:
    """One sentence naming what a link asked for that could not be shown, or None when everything could."""
    if not ignored:
        return None
    names = ", ".join(f"`{name}`" for name in ignored)
    return (f"Part of this link could not be used and was ignored ({names}: unknown, out of range or no longer in "
            "the gallery); the rest of the view is as linked.")


def query(sample: str | None, slice_number: int | None, threshold: float, display: dict, tta: bool,
          presenter: bool) -> dict[str, str]:
    """The query parameters of a view; settings at their defaults are left out to keep links short.

    Args:
        sample: the gallery sample's image name (None for an upload or no scan).
        slice_number: the 1-based slice of a volume (None for a single slice).
        threshold: the shared threshold.
        display: the display settings chosen so far (any of :data:`DISPLAY_DEFAULTS`).
        tta: whether uncertainty (the mirror pass) is on.
        presenter: whether presenter mode is on.
    """
    params = {}
    if sample is not None:
        params["sample"] = sample
        if slice_number is not None:
            params["slice"] = str(slice_number)
    params["threshold"] = f"{threshold:.2f}"
    for name, default in DISPLAY_DEFAULTS.items():
        if name in display and display[name] != default:
            params[name] = f"{display[name]:.2f}" if name == "opacity" else str(display[name])
    params["tta"] = "1" if tta else "0"
    if presenter:
        params["presenter"] = "1"
    return params


_COPY_LINK = st.components.v2.component(
    "mriseg_copy_link",
    html='<div class="copy"><button type="button">Copy link</button><span class="status"></span>'
         '<input class="fallback" readonly hidden></div>',
    css="""
.copy {display: flex; flex-wrap: wrap; align-items: center; gap: 0.5rem; font-family: inherit;}
button {font: inherit; font-size: var(--copy-size); color: inherit; background: transparent; cursor: pointer;
        border: 1px solid rgba(128, 128, 128, 0.45); border-radius: 0.5rem; padding: 0.3rem 0.8rem;}
button:hover {border-color: #ff4b4b; color: #ff4b4b;}
.status {font-size: var(--copy-size); opacity: 0.85;}
.fallback {font: inherit; font-size: var(--copy-size); width: 100%; min-width: 16rem;}
""",
    js="""
export default function (component) {
  const { data, parentElement } = component;
  const root = parentElement.querySelector('.copy');
  root.style.setProperty('--copy-size', data.size);
  const status = root.querySelector('.status'), fallback = root.querySelector('.fallback');
  root.querySelector('button').onclick = async () => {
    const link = window.location.href;
    try {
      await navigator.clipboard.writeText(link);
      status.textContent = 'Link copied.' + (data.note ? ' ' + data.note : '');
    } catch (error) {
      // No clipboard (plain http on a class network): the link in a field, selected for Ctrl+C.
      fallback.hidden = false;
      fallback.value = link;
      fallback.select();
      status.textContent = 'Copy this link:' + (data.note ? ' ' + data.note : '');
    }
  };
}
""",
)


def copy_link_button(key: str, uploaded: bool, presenter: bool = False) -> None:
    """The Copy link button; ``uploaded``: the view shows an upload, which the link cannot carry (said on copy)."""
    _COPY_LINK(key=key, data={"note": UPLOAD_NOTE if uploaded else None,
                              "size": "1.3rem" if presenter else "0.95rem"})
