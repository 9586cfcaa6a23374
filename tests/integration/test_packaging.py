"""The distribution installs into a fresh venv, plainly and editable, and imports its four packages."""

import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
PACKAGES = {
    "runstream": "sdk",
    "runstream.collectors": "sdk/collectors",
    "runstream.streams": "streams",
    "runstream.storage": "storage",
    "runstream.api": "api",
}

PROBE = """
import importlib, importlib.util, json, sys
found = {name: importlib.import_module(name).__file__ for name in %r}
import runstream.events
from importlib.resources import files
found["migrations"] = sorted(p.name for p in files("runstream.storage").joinpath("migrations").iterdir())
found["ui"] = sorted(p.name for p in files("runstream.api").joinpath("ui").iterdir())
found["faust_installed"] = importlib.util.find_spec("faust") is not None
print(json.dumps(found))
""" % (list(PACKAGES),)  # noqa: UP031 - the template is Python code, full of braces


def _source_copy(tmp_path: Path) -> Path:
    """The project's files, copied so builds leave nothing in the working tree."""
    src = tmp_path / "src"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "__pycache__", "build", "*.egg-info", "node_modules", ".pytest_cache"
        ),
    )
    return src


def _fresh_venv(path: Path) -> Path:
    venv.create(path, with_pip=True)
    return path / "bin" / "python"


def _install_and_probe(python: Path, *pip_args: str) -> dict:
    subprocess.run([python, "-m", "pip", "install", "-q", *pip_args], check=True, capture_output=True, timeout=600)
    out = subprocess.run([python, "-c", PROBE], check=True, capture_output=True, text=True, timeout=60).stdout
    import json

    return json.loads(out)


@pytest.mark.parametrize("editable", [False, True], ids=["pip-install", "pip-install-editable"])
def test_fresh_venv_imports_all_four_packages(tmp_path, editable):
    src = _source_copy(tmp_path)
    python = _fresh_venv(tmp_path / "venv")
    found = _install_and_probe(python, *(["-e", str(src)] if editable else [str(src)]))

    for name, directory in PACKAGES.items():
        path = Path(found[name])
        if editable:
            assert path.parent == src / directory, f"{name} should come from {directory}/ in an editable install"
        else:
            assert "site-packages" in path.parts
    assert "0001_metrics.sql" in found["migrations"]
    # The web UI's built bundle ships in the package: serving it needs no Node.
    assert {"index.html", "app.js", "app.css", "manifest.json"} <= set(found["ui"])
    assert found["faust_installed"] is False, "the base install must stay light: faust belongs to [server]"
    if editable:
        (src / "sdk" / "events.py").write_text((src / "sdk" / "events.py").read_text() + "\nEDITED = True\n")
        out = subprocess.run(
            [python, "-c", "import runstream.events as e; print(e.EDITED)"], capture_output=True, text=True
        )
        assert out.stdout.strip() == "True", out.stderr


def test_cli_entry_point_is_installed():
    exe = Path(sys.executable).parent / "runstream"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("migrate", "topics", "worker", "api"):
        assert command in out
