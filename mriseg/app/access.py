"""Who may use the app: settings from the environment or Streamlit secrets, and the class password.

A class password is Streamlit's documented secrets-based gate: set ``MRISEG_CLASS_PASSWORD`` in the server's
environment or ``class_password`` in ``.streamlit/secrets.toml``, and each browser session sees only a password
form until the password is entered. It keeps a lesson's app to the class; it is not a user account system.
"""

from __future__ import annotations

import hmac
import os

import streamlit as st

PASSWORD_VARIABLE = "MRISEG_CLASS_PASSWORD"
PASSWORD_SECRET = "class_password"
_TYPED = "class_password_typed"
_UNLOCKED = "class_password_unlocked"
_REFUSED = "class_password_refused"


def setting(name: str, secret: str | None = None) -> str | None:
    """The environment variable ``name``, else the Streamlit secret ``secret`` (default: ``name``), else None."""
    if os.environ.get(name):
        return os.environ[name]
    try:
        return st.secrets.get(secret or name)
    except FileNotFoundError:  # no secrets.toml anywhere: nothing configured
        return None


def class_password() -> str | None:
    """The class password, when one is set."""
    return setting(PASSWORD_VARIABLE, PASSWORD_SECRET) or None


def unlocked() -> bool:
    """Whether this session may see the app: no class password is set, or it was entered here."""
    return not class_password() or bool(st.session_state.get(_UNLOCKED))


def password_form() -> None:
    """The only thing a locked session sees: a password field, and a message after a wrong password."""
    st.markdown("### :material/lock: mriseg")
    with st.form("class_password_form", clear_on_submit=True):
        st.text_input("Class password", type="password", key=_TYPED, help="Your teacher gives it out in class")
        st.form_submit_button("Enter", on_click=_check)
    if st.session_state.get(_REFUSED):
        st.error("Wrong password: ask your teacher for the class password.")


def _check() -> None:
    typed = st.session_state.get(_TYPED) or ""
    # Compared as bytes in constant time: the time taken says nothing about how much of the password was right.
    right = hmac.compare_digest(typed.encode(), (class_password() or "").encode())
    st.session_state[_UNLOCKED] = right
    st.session_state[_REFUSED] = not right
