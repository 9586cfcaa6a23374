"""Git state and patches, against real temporary repositories."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import git
import pytest

from runstream.collectors.git import diff_patch, git_info, redact_url


@pytest.fixture(autouse=True)
def _no_user_git_config(monkeypatch, tmp_path):
    """The user's git configuration (prefixes, colours, hooks) must not leak into these tests."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)


def _repo(path: Path) -> git.Repo:
    repo = git.Repo.init(path, initial_branch="main")
    with repo.config_writer() as config:
        config.set_value("user", "name", "Test").set_value("user", "email", "test@example.com")
    return repo


def _commit(repo: git.Repo, files: dict[str, bytes], message: str = "commit") -> str:
    for name, content in files.items():
        (Path(repo.working_dir) / name).write_bytes(content)  # a repository with a work tree: the same directory
    repo.index.add(list(files))
    return repo.index.commit(message).hexsha


def test_not_a_work_tree_gives_none_and_no_patch(tmp_path):
    assert git_info(tmp_path) is None
    assert git_info(tmp_path / "missing") is None
    assert diff_patch(tmp_path) == ""
    git.Repo.init(tmp_path / "bare.git", bare=True)
    assert git_info(tmp_path / "bare.git") is None


def test_no_git_at_all_gives_none(tmp_path, monkeypatch):
    repo = _repo(tmp_path / "r")
    _commit(repo, {"a.txt": b"a\n"})
    monkeypatch.setitem(sys.modules, "git", None)  # as when GitPython finds no git executable
    assert git_info(tmp_path / "r") is None
    assert diff_patch(tmp_path / "r") == ""


def test_a_clean_commit_on_a_branch(tmp_path):
    repo = _repo(tmp_path / "r")
    sha = _commit(repo, {"a.txt": b"a\n"})
    (tmp_path / "r" / "sub").mkdir()
    info = git_info(tmp_path / "r" / "sub")  # found from a subdirectory too
    assert info == {"commit": sha, "branch": "main", "remote": None, "dirty": False, "root": str(tmp_path / "r")}
    assert diff_patch(tmp_path / "r") == ""
    repo.create_head("feature/x").checkout()
    assert git_info(tmp_path / "r")["branch"] == "feature/x"


def test_detached_head_has_no_branch(tmp_path):
    repo = _repo(tmp_path / "r")
    first = _commit(repo, {"a.txt": b"a\n"})
    _commit(repo, {"a.txt": b"b\n"})
    repo.git.checkout(first)
    info = git_info(tmp_path / "r")
    assert info["commit"] == first and info["branch"] is None and info["dirty"] is False


def test_staged_and_unstaged_changes_are_one_patch_that_applies(tmp_path):
    root = tmp_path / "r"
    repo = _repo(root)
    binary = bytes(range(256)) * 4
    _commit(repo, {"a.txt": b"one\ntwo\n", "b.txt": b"bee\n", "blob.bin": binary})
    (root / "a.txt").write_bytes(b"one\nTWO\n")  # unstaged
    (root / "b.txt").write_bytes(b"bee\nstaged line\n")
    (root / "c.txt").write_bytes(b"new staged file\n")
    (root / "blob.bin").write_bytes(binary[::-1])
    repo.index.add(["b.txt", "c.txt", "blob.bin"])
    (root / "untracked.txt").write_bytes(b"not part of the patch\n")

    assert git_info(root)["dirty"] is True
    patch = diff_patch(root)
    assert "+TWO" in patch and "+staged line" in patch and "+new staged file" in patch
    assert "GIT binary patch" in patch and "untracked" not in patch
    assert patch.endswith("\n")
    assert patch == repo.git.diff("HEAD", "--binary") + "\n"

    # The patch restores the exact work tree on a clean checkout of the commit.
    expected = {name: (root / name).read_bytes() for name in ("a.txt", "b.txt", "c.txt", "blob.bin")}
    repo.git.reset("--hard")
    (root / "patch.diff").write_text(patch)
    repo.git.apply("patch.diff")
    assert {name: (root / name).read_bytes() for name in expected} == expected


def test_untracked_files_alone_are_not_dirty(tmp_path):
    repo = _repo(tmp_path / "r")
    _commit(repo, {"a.txt": b"a\n"})
    (tmp_path / "r" / "new.txt").write_text("x")
    assert git_info(tmp_path / "r")["dirty"] is False
    assert diff_patch(tmp_path / "r") == ""


def test_text_that_is_not_utf8_does_not_break_the_patch(tmp_path):
    repo = _repo(tmp_path / "r")
    _commit(repo, {"latin1.txt": "café\n".encode("latin-1")})
    (tmp_path / "r" / "latin1.txt").write_bytes("crème\n".encode("latin-1"))
    patch = diff_patch(tmp_path / "r")
    assert "+cr\ufffdme" in patch
    patch.encode()  # storable as UTF-8


def test_a_repository_without_commits(tmp_path):
    root = tmp_path / "r"
    repo = _repo(root)
    assert git_info(root) == {"commit": None, "branch": "main", "remote": None, "dirty": False, "root": str(root)}
    assert diff_patch(root) == ""
    (root / "a.txt").write_text("first\n")
    repo.index.add(["a.txt"])
    (root / "a.txt").write_text("first\nsecond\n")  # and a change on top, not staged
    info = git_info(root)
    assert info["commit"] is None and info["dirty"] is True
    patch = diff_patch(root)
    assert "new file mode" in patch and "+first\n+second\n" in patch


def test_origin_is_preferred_and_credentials_are_stripped(tmp_path):
    repo = _repo(tmp_path / "r")
    _commit(repo, {"a.txt": b"a\n"})
    repo.create_remote("backup", "https://other.example.com/x.git")
    assert git_info(tmp_path / "r")["remote"] == "https://other.example.com/x.git", "the first remote without origin"
    repo.create_remote("origin", "https://alice:ghp_s3cret@github.com/org/repo.git")
    info = git_info(tmp_path / "r")
    assert info["remote"] == "https://github.com/org/repo.git"
    assert "s3cret" not in str(info)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://user:token@github.com/org/repo.git", "https://github.com/org/repo.git"),
        ("https://ghp_token@github.com/org/repo.git", "https://github.com/org/repo.git"),
        ("https://oauth2:to@ken@gitlab.example.com:8443/g/r.git", "https://gitlab.example.com:8443/g/r.git"),
        ("HTTP://u:p@[::1]:8080/r", "HTTP://[::1]:8080/r"),
        ("https://github.com/org/repo.git", "https://github.com/org/repo.git"),
        ("https://host/path/@v1", "https://host/path/@v1"),
        ("git@github.com:org/repo.git", "git@github.com:org/repo.git"),
        ("ssh://git@github.com:22/org/repo.git", "ssh://git@github.com:22/org/repo.git"),
        ("git+ssh://git@host/org/repo.git", "git+ssh://git@host/org/repo.git"),
        ("ssh://git:secret@host/org/repo.git", "ssh://git@host/org/repo.git"),
        ("/srv/git/repo.git", "/srv/git/repo.git"),
        ("file:///srv/git/repo.git", "file:///srv/git/repo.git"),
    ],
)
def test_redact_url(url, expected):
    assert redact_url(url) == expected
