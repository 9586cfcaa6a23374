"""The git state of the code a run executes: commit, branch, remote, dirty flag, and the uncommitted diff.

Not being in a git work tree (or having no git executable) is no error: there is
just no git information. Anything else that fails is logged and treated the same.
"""

from __future__ import annotations

import logging
import re
import subprocess
from pathlib import Path
from typing import Any

log = logging.getLogger("runstream")

# scheme://userinfo@ - greedy up to the authority's end, so an "@" inside a password is covered too.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://(?P<userinfo>[^/?#]*)@")


def git_info(path: str | Path = ".") -> dict[str, Any] | None:
    """``{"commit", "branch", "remote", "dirty", "root"}`` of the work tree holding ``path``, or None.

    ``commit`` is None before the first commit, ``branch`` None on a detached
    HEAD, ``remote`` (origin's URL, else the first remote's, without credentials)
    None without remotes. ``dirty`` means tracked files differ from HEAD, staged
    or not (untracked files do not count), so it is True exactly when
    ``diff_patch`` is not empty.
    """
    repo = _open(path)
    if repo is None:
        return None
    try:
        with repo:
            head = repo.head
            return {
                "commit": head.commit.hexsha if head.is_valid() else None,
                "branch": None if head.is_detached else head.reference.name,
                "remote": _remote_url(repo),
                "dirty": repo.is_dirty(index=True, working_tree=True, untracked_files=False),
                "root": str(repo.working_tree_dir),
            }
    except Exception as exc:  # noqa: BLE001 - a broken repository costs the git information, never the run
        log.warning("runstream: git information unavailable: %r", exc)
        return None


def diff_patch(path: str | Path = ".") -> str:
    """The uncommitted changes, staged and unstaged, as one patch (``git diff HEAD``); "" if none.

    Binary files are in git's binary patch form, so ``git apply`` restores them
    too; text that is not UTF-8 is decoded with replacement characters. Before
    the first commit the patch holds the whole index against nothing.
    """
    repo = _open(path)
    if repo is None:
        return ""
    try:
        with repo:
            base = "HEAD" if repo.head.is_valid() else _empty_tree(repo)
            # Fixed prefixes and no colour, external diff or textconv: the user's
            # git config must not change what the patch looks like.
            patch = repo.git.diff(
                "--binary",
                "--no-color",
                "--no-ext-diff",
                "--no-textconv",
                "--src-prefix=a/",
                "--dst-prefix=b/",
                base,
                "--",
                stdout_as_string=False,
                strip_newline_in_stdout=False,
            )
            return patch.decode("utf-8", errors="replace")
    except Exception as exc:  # noqa: BLE001
        log.warning("runstream: git diff unavailable: %r", exc)
        return ""


def redact_url(url: str) -> str:
    """``url`` without credentials: ``https://user:token@host/x`` becomes ``https://host/x``.

    An ssh URL's user is a login, not a secret: ``ssh://git@host/x`` and
    ``git@host:x`` stay as they are (only a password in an ssh URL is dropped).
    Local paths and URLs without credentials are returned unchanged.
    """
    match = _USERINFO.match(url)
    if match is None:
        return url
    scheme, userinfo = match["scheme"], match["userinfo"]
    login = ""
    if "ssh" in scheme.lower():
        user, has_password, _ = userinfo.partition(":")
        if not has_password:
            return url
        login = f"{user}@"
    return f"{scheme}://{login}{url[match.end() :]}"


def _open(path: str | Path) -> Any:
    """The ``git.Repo`` of the work tree holding ``path``, or None (not in one, a bare repository, no git)."""
    try:
        import git  # raises ImportError where there is no git executable

        repo = git.Repo(path, search_parent_directories=True)
    except Exception as exc:  # noqa: BLE001 - InvalidGitRepositoryError, NoSuchPathError, ImportError
        log.debug("runstream: no git work tree at %s: %r", path, exc)
        return None
    if repo.bare:
        repo.close()
        return None
    return repo


def _remote_url(repo: Any) -> str | None:
    remotes = repo.remotes
    if not remotes:
        return None
    remote = next((r for r in remotes if r.name == "origin"), remotes[0])
    try:
        return redact_url(remote.url)
    except Exception:  # noqa: BLE001 - a remote without a url
        return None


def _empty_tree(repo: Any) -> str:
    """The id of the empty tree, which depends on the repository's hash (SHA-1 or SHA-256); nothing is written."""
    return repo.git.hash_object("-t", "tree", "--stdin", istream=subprocess.DEVNULL).strip()
