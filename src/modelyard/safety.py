"""Names and relative paths that become part of a filesystem path, checked before anything touches the disk.

Model names, version numbers, snapshot refs and digests, artifact paths, Triton folders and ONNX
external-data locations reach modelyard from configs, HTTP routes, registry tags and model files;
each of them ends up joined onto a root folder. A value such as ``../../etc``, ``/etc/passwd``,
``%2e%2e%2f``, ``file:///x`` or ``a\\b`` would then read or write outside that root. The checks
here are an allow-list, not a list of known attacks: a name is 1-128 characters from
``[A-Za-z0-9_.-]`` starting with a letter or digit and without ``..``, so every encoded,
separator, scheme, fragment, NUL or whitespace form is refused by the pattern itself. They are pure
string checks (no filesystem access), so they run before the first ``open``/``mkdir``/``listdir``.

Symlinks cannot be judged from the string: :func:`contained` resolves the joined path (every link
on the way) and refuses it when it lands outside the root, before the caller reads or writes it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from modelyard.errors import ModelyardError

__all__ = ["NAME_RULE", "RELATIVE_RULE", "VERSION_RULE", "PathEscapeError", "UnsafeNameError", "check_digest",
           "check_name", "check_relative", "check_version", "contained", "name_problem", "resolves_inside"]

NAME_RULE = "1-128 characters from [A-Za-z0-9_.-], starting with a letter or digit, without '..'"
VERSION_RULE = "a positive integer without leading zeros, e.g. '3'"
RELATIVE_RULE = f"a relative path of '/'-separated parts, each {NAME_RULE}, e.g. 'checkpoints/best.ckpt'"
DIGEST_RULE = "6-64 lowercase hexadecimal characters (a sha256 digest or its prefix)"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_VERSION = re.compile(r"[1-9][0-9]{0,17}")
_DIGEST = re.compile(r"[0-9a-f]{6,64}")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


class UnsafeNameError(ModelyardError, ValueError):
    """A name or relative path that would leave its folder (or is not a plain name); the message names
    the value received and the rule it must follow. A ``ValueError``, so callers that catch bad
    arguments catch it too."""


class PathEscapeError(UnsafeNameError):
    """A path that resolves (through a symlink) to somewhere outside its root folder."""


def _shown(value: object) -> str:
    """``repr`` of a received value, cut so that a hostile megabyte does not end up in a log line."""
    text = repr(value)
    return text if len(text) <= 140 else text[:137] + "..."


def name_problem(value: object) -> str | None:
    """Why ``value`` is not a safe name (one folder or file name), or None when it is.

    The first matching reason is given, the most specific first, so the message says *why* (e.g.
    "it contains '%' (a percent-encoded character such as %2e or %2f)") rather than only that the
    pattern failed.
    """
    if not isinstance(value, str):
        return f"it is a {type(value).__name__}, not a string"
    rules = [
        (not value, "it is empty"),
        (not value.strip(), "it is only whitespace"),
        ("\0" in value, "it contains a NUL character"),
        (len(value) > 128, f"it is {len(value)} characters long, more than 128"),
        (value != value.strip(), "it starts or ends with whitespace"),
        (value.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", value) is not None, "it is an absolute path"),
        (_SCHEME.match(value) is not None, "it starts with a URL scheme or drive ('scheme:'), not a name"),
        ("/" in value or "\\" in value, "it contains a path separator"),
        (".." in value, "it contains '..'"),
        ("%" in value, "it contains '%' (a percent-encoded character such as %2e or %2f)"),
        ("#" in value or "?" in value, "it contains a URL fragment or query ('#' or '?')"),
        (value.startswith("."), "it starts with '.' (a hidden or relative folder)"),
        (not _NAME.fullmatch(value), "it contains characters outside [A-Za-z0-9_.-] or starts with '_' or '-'"),
    ]
    return next((reason for broken, reason in rules if broken), None)


def check_name(value: object, what: str = "name") -> str:
    """Return ``value`` when it is a safe single folder or file name (see :data:`NAME_RULE`).

    Raises:
        UnsafeNameError: naming ``what``, the value received, why it is refused and the rule.
    """
    if reason := name_problem(value):
        raise UnsafeNameError(f"{what} {_shown(value)} is refused: {reason}; expected {NAME_RULE}, "
                              "e.g. 'fraud-detector'")
    return value  # type: ignore[return-value]  # name_problem returned None: a str


def check_version(value: object, what: str = "model version") -> str:
    """Return ``str(value)`` when it is a positive integer version (a Triton or registry version).

    Raises:
        UnsafeNameError: naming ``what``, the value received and :data:`VERSION_RULE`.
    """
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not _VERSION.fullmatch(text):
        raise UnsafeNameError(f"{what} {_shown(value)} is refused: expected {VERSION_RULE}")
    return text


def check_digest(value: object, what: str = "snapshot digest") -> str:
    """Return ``value`` when it is a lowercase hex digest or digest prefix (see :data:`DIGEST_RULE`).

    Raises:
        UnsafeNameError: naming ``what``, the value received and the rule.
    """
    if not isinstance(value, str) or not _DIGEST.fullmatch(value):
        raise UnsafeNameError(f"{what} {_shown(value)} is refused: expected {DIGEST_RULE}")
    return value


def check_relative(value: object, what: str = "relative path") -> PurePosixPath:
    """``value`` as a relative path whose every part is a safe name (see :data:`RELATIVE_RULE`).

    Only ``/`` separates parts (a backslash is refused, not reinterpreted), so a path means the same
    on every platform and inside a URI.

    Raises:
        UnsafeNameError: naming ``what``, the value received, the offending part and the rule.
    """
    if not isinstance(value, (str, os.PathLike)):
        raise UnsafeNameError(f"{what} {_shown(value)} is refused: it is a {type(value).__name__}; "
                              f"expected {RELATIVE_RULE}")
    text = os.fspath(value)
    if isinstance(text, bytes):
        raise UnsafeNameError(f"{what} {_shown(value)} is refused: bytes; expected {RELATIVE_RULE}")
    if not text or text.startswith(("/", "\\")) or _SCHEME.match(text) or "\\" in text:
        reason = ("it is empty" if not text else "it is absolute" if text.startswith(("/", "\\"))
                  else "it is a URI or drive path" if _SCHEME.match(text) else "it contains a backslash")
        raise UnsafeNameError(f"{what} {_shown(value)} is refused: {reason}; expected {RELATIVE_RULE}")
    for part in text.split("/"):
        if reason := name_problem(part):
            raise UnsafeNameError(f"{what} {_shown(value)} is refused: part {_shown(part)}: {reason}; "
                                  f"expected {RELATIVE_RULE}")
    return PurePosixPath(text)


def resolves_inside(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` (e.g. an entry found by listing ``root``) still lies inside ``root`` once every
    symlink on the way is followed. For names read from the disk, which :func:`contained` would judge
    as strings first."""
    return Path(path).resolve().is_relative_to(Path(root).resolve())


def contained(root: str | os.PathLike[str], relative: str | os.PathLike[str], what: str = "path") -> Path:
    """``root / relative``, resolved, when it stays inside ``root`` after following every symlink.

    ``relative`` is first checked as a string (:func:`check_relative`), without touching the disk;
    only then are ``root`` and the joined path resolved. The returned path is the resolved one, so a
    caller that goes on using it cannot be redirected by the link it was judged through. Paths that
    do not exist yet are allowed (their existing ancestors are resolved).

    Raises:
        UnsafeNameError: ``relative`` is not a safe relative path.
        PathEscapeError: the joined path resolves outside ``root`` (a symlink pointing out); the
            message names both.
    """
    rel = check_relative(relative, what)
    base = Path(root).resolve()
    target = (base / rel).resolve()
    if not target.is_relative_to(base):
        raise PathEscapeError(f"{what} {_shown(str(rel))} is refused: under {base} it resolves to {target}, "
                              "outside that folder (a symlink pointing out of it); expected a file or folder "
                              "inside it")
    return target
