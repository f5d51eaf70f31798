"""``mriseg serve`` says where the app listens and who can use it, with the address and port Streamlit resolves."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from browser_helpers import streamlit_server
from helpers import REPO_ROOT

from mriseg.data.dicom import FOLDER_PREFIX

pytestmark = pytest.mark.slow

# Run in a fresh process: resolving the options loads them into Streamlit's process-wide config.
RESOLVE = ("import sys; from mriseg.app.serve import listening_lines, resolved_address; "
           "print('\\n'.join(listening_lines(*resolved_address(sys.argv[1:]), password_set=False)))")


def resolve(tmp_path, *options: str, **env: str) -> list[str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("STREAMLIT_")}
    result = subprocess.run([sys.executable, "-c", RESOLVE, *options], cwd=tmp_path, capture_output=True, text=True,
                            env=dict(environment, PYTHONPATH=str(REPO_ROOT), **env), timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_without_an_address_it_says_every_interface_and_lists_this_machine(tmp_path):
    (tmp_path / ".streamlit").mkdir()
    (tmp_path / ".streamlit" / "config.toml").write_text("[server]\nport = 8612\n")
    where, warning = resolve(tmp_path)
    assert where.startswith("the app listens on every network interface of this machine, port 8612: "
                            "http://127.0.0.1:8612")
    assert warning.startswith("warning: anyone who can reach these addresses can use the app")
    assert "MRISEG_CLASS_PASSWORD" in warning and "--server.address 127.0.0.1" in warning
    # The environment overrides the config file, and a wildcard address is still every interface.
    assert "port 8613:" in resolve(tmp_path, "--server.address", "0.0.0.0", STREAMLIT_SERVER_PORT="8613")[0]


def test_an_address_given_is_the_one_named(tmp_path):
    assert resolve(tmp_path, "--server.address", "::1", "--server.port", "8614")[0] == (
        "the app listens on http://[::1]:8614")


def test_serve_prints_its_address_and_the_class_password_state(tmp_path):
    """Also: the DICOM files a server killed mid-read left behind (they name patients) are gone once it starts."""
    log = tmp_path / "server.log"
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left_behind = tmp_path / f"mriseg-{os.getuid()}" / f"{FOLDER_PREFIX}{finished.stdout.strip()}-x1y2"
    left_behind.mkdir(parents=True)
    (left_behind / "00000.dcm").write_bytes(b"PatientName Doe^Jane")
    environment = {"MRISEG_CLASS_PASSWORD": "glioma-2b", "TMPDIR": str(tmp_path)}
    with streamlit_server(warm=True, log=log, env=environment) as (url, _):
        assert not left_behind.exists()
    lines = log.read_text().splitlines()
    assert f"the app listens on {url}" in lines
    assert "a class password is required (MRISEG_CLASS_PASSWORD or class_password in secrets.toml)" in lines
    assert not [line for line in lines if line.startswith("warning:")]
