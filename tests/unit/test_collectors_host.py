"""Host information and the installed packages."""

from __future__ import annotations

import getpass
import json
import logging
import os
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from types import SimpleNamespace

import orjson

from runstream.collectors import host
from runstream.collectors.host import _installed_packages, host_info, installed_packages

SCRIPT = "import json; from runstream.collectors.host import host_info; print(json.dumps(host_info()))\n"


def _run(args: list[str], cwd) -> dict:
    out = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=60)
    return json.loads(out.stdout)


def test_host_info_describes_this_process(monkeypatch):
    monkeypatch.setattr(host, "gpu_names", lambda: [])
    info = host_info()
    assert info["host"] == socket.gethostname()
    assert info["os"] == platform.system() and info["platform"]
    assert info["python"] == platform.python_version()
    assert info["python_implementation"] == platform.python_implementation()
    assert info["executable"] == sys.executable
    assert info["args"] == sys.argv[1:]
    assert info["cwd"] == os.getcwd()
    assert info["pid"] == os.getpid()
    assert time.time() - 86400 < info["started_at"] <= time.time()
    assert info["cpu_count"] >= 1 and info["memory_total_mb"] > 100
    assert "gpus" not in info and "gpu_count" not in info
    orjson.dumps(info)  # goes into the run-start event as it is


def test_program_and_args_of_a_script_run_by_a_relative_path(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text(SCRIPT)
    info = _run(["src/train.py", "--lr", "0.1"], cwd=tmp_path)
    assert info["program"] == str((tmp_path / "src" / "train.py").resolve())
    assert info["args"] == ["--lr", "0.1"]
    assert info["cwd"] == str(tmp_path.resolve())


def test_program_of_a_module_and_of_python_c(tmp_path):
    (tmp_path / "trainer.py").write_text(SCRIPT)
    assert _run(["-m", "trainer", "x"], cwd=tmp_path)["program"] == str((tmp_path / "trainer.py").resolve())
    info = _run(["-c", SCRIPT, "a", "b"], cwd=tmp_path)
    assert info["program"] == "-c" and info["args"] == ["a", "b"]


def test_unreadable_values_are_none_and_only_unexpected_failures_are_logged(monkeypatch, caplog):
    monkeypatch.setattr(host, "gpu_names", lambda: [])

    def no_passwd_entry() -> str:
        raise KeyError("getpwuid(): uid not found: 1234")  # a container user without /etc/passwd entry

    def broken() -> str:
        raise RuntimeError("boom")

    monkeypatch.setattr(getpass, "getuser", no_passwd_entry)
    monkeypatch.setattr(socket, "gethostname", broken)
    with caplog.at_level(logging.WARNING, logger="runstream"):
        info = host_info()
    assert info["user"] is None and info["host"] is None
    assert info["pid"] == os.getpid()
    assert [r.message for r in caplog.records] == ["runstream: host host unavailable: RuntimeError('boom')"]


def test_gpus_come_from_the_system_collector(monkeypatch):
    monkeypatch.setattr(host, "gpu_names", lambda: ["NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3"])
    info = host_info()
    assert info["gpu_count"] == 2 and info["gpus"] == ["NVIDIA H100 80GB HBM3"] * 2


def test_installed_packages_of_this_environment():
    packages = installed_packages()
    assert packages == sorted(packages, key=lambda p: p.split("==")[0].lower().replace("_", "-"))
    assert all(p.count("==") == 1 for p in packages)
    assert f"psutil=={metadata.version('psutil')}" in packages
    assert f"runstream=={metadata.version('runstream')}" in packages
    names = [p.split("==")[0].lower() for p in packages]
    assert len(names) == len(set(names))


def test_installed_packages_deduplicates_and_skips_broken_metadata(monkeypatch):
    class Broken:
        @property
        def metadata(self) -> dict:
            raise OSError("METADATA unreadable")

    dists = [
        SimpleNamespace(metadata={"Name": "Zeta"}, version="2.0"),
        SimpleNamespace(metadata={"Name": "foo_bar"}, version="1.1"),  # first on sys.path: wins
        Broken(),
        SimpleNamespace(metadata={"Name": "Foo-Bar"}, version="0.9"),
        SimpleNamespace(metadata={"Name": None}, version="1.0"),
        SimpleNamespace(metadata={"Name": "alpha"}, version="3"),
    ]
    monkeypatch.setattr(metadata, "distributions", lambda: iter(dists))
    _installed_packages.cache_clear()  # read once per process: this test's environment is its own
    try:
        assert installed_packages() == ["alpha==3", "foo_bar==1.1", "Zeta==2.0"]
    finally:
        _installed_packages.cache_clear()
