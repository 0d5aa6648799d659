"""The installed distribution as `pip install ./pccl-py` leaves it: an abi3 wheel whose
metadata names the crate's version, the readme, URLs and classifiers, and a
`pccl-master` console script that runs a master."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pccl
from conftest import REPO


def workspace_version() -> str:
    """[workspace.package] version in the root Cargo.toml: the crate's version."""
    text = (REPO / "Cargo.toml").read_text()
    section = text.split("[workspace.package]", 1)[1].split("\n[", 1)[0]
    found = re.search(r'^version\s*=\s*"([^"]+)"', section, re.M)
    assert found, "no version in [workspace.package]"
    return found.group(1)


def test_version_is_the_crates():
    assert metadata.version("pccl") == workspace_version()


def test_wheel_is_abi3():
    tags = [line.split(":", 1)[1].strip() for line in
            (metadata.distribution("pccl").read_text("WHEEL") or "").splitlines()
            if line.startswith("Tag:")]
    assert tags and all(t.startswith("cp39-abi3-") for t in tags), tags


def test_metadata_declares_readme_urls_classifiers():
    m = metadata.metadata("pccl")
    assert m["Name"] == "pccl"
    assert m["Summary"] and "PCCL" in m["Summary"]
    assert m["Requires-Python"] == ">=3.9"
    assert m["Description-Content-Type"].startswith("text/markdown")
    assert "import pccl" in (m.get_payload() or m["Description"] or "")
    urls = dict(u.split(", ", 1) for u in m.get_all("Project-URL") or [])
    assert {"Homepage", "Repository", "Issues", "Documentation"} <= urls.keys(), urls
    assert all(u.startswith("https://") for u in urls.values()), urls
    classifiers = m.get_all("Classifier") or []
    for c in ("License :: OSI Approved :: MIT License", "Programming Language :: Rust",
              "Operating System :: POSIX :: Linux", "Typing :: Typed"):
        assert c in classifiers, classifiers


def test_pccl_master_console_script(procs):
    (script,) = [e for e in metadata.entry_points(group="console_scripts")
                 if e.name == "pccl-master"]
    assert script.value == "pccl.master:main"
    exe = Path(sys.executable).parent / "pccl-master"
    assert os.access(exe, os.X_OK), f"{exe} is not installed"
    # Run as a user would, by its own shebang; `--listen` as the Rust binary spells it.
    p = subprocess.Popen([str(exe), "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    procs.procs.append(p)
    line = p.stdout.readline()
    assert "listening on 127.0.0.1:" in line, line
    port = int(line.rsplit(":", 1)[1])
    c = pccl.Communicator(f"127.0.0.1:{port}", p2p_bind_address="127.0.0.1:0")
    c.connect(n_attempts=3)
    assert c.get_attribute(pccl.Attribute.GLOBAL_WORLD_SIZE) == 1
    c.close()
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=10) == 0
    usage = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 0 and usage.stdout.startswith("usage: pccl-master"), usage
