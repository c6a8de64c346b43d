"""Where state that outlives a process lives: a local folder, or object storage behind a URI.

:func:`location` turns a path or URI into a :class:`Location` (a pyarrow filesystem and a path on
it). Accepted:

* a local path (``inference_log``, ``/var/lib/modelyard/log``, ``file:///var/lib/...``);
* ``s3://bucket/prefix``: Amazon S3 or an S3-compatible store (MinIO, Ceph, ...). The endpoint of a
  compatible store comes from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (``http://host:port``),
  or from the URI itself (``s3://bucket/prefix?endpoint_override=http://host:9000``); credentials
  from the usual AWS chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, a profile, an instance
  role);
* ``gs://bucket/prefix``: Google Cloud Storage, with Google's default credentials.

Writes never rename on object storage: an object becomes visible whole when its upload completes,
so a writer gives every object a unique name and readers list complete objects only. Local writes
keep :mod:`modelyard._io`'s temporary file plus rename.

Append-style records (a timeline, an audit log) have no append on object storage either:
:class:`RecordFolder` writes each record as its own object under a unique, time-ordered name
(:func:`record_name`) and reads them back in name order, so a killed writer leaves every earlier
record whole and no partial one.

Nothing heavy is imported here at module level: pyarrow loads when a location is resolved.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from modelyard._io import atomic_write_bytes

if TYPE_CHECKING:
    import pyarrow.fs as pafs

__all__ = ["REMOTE_SCHEMES", "Location", "RecordFolder", "StorageError", "is_record_name", "is_remote", "is_uri",
           "location", "record_name"]

REMOTE_SCHEMES = ("s3", "gs", "gcs")
_ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
_EXPECTED = "a local path, file:///path, s3://bucket/prefix or gs://bucket/prefix"
_CREDENTIALS_HINT = {
    "s3": "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or run with an instance role), and "
          "AWS_ENDPOINT_URL=http://host:port for an S3-compatible store",
    "gs": "set GOOGLE_APPLICATION_CREDENTIALS to a service account key (or run with a workload identity)",
}


_RECORD = re.compile(r"^\d{20}-[0-9a-f]{8}\.json$")
_last_ns = 0
_name_lock = threading.Lock()


class StorageError(OSError):
    """A storage location that cannot be used: its URI is malformed, or the store refused (the message
    names the location and what to fix)."""


def is_uri(uri: str | os.PathLike[str]) -> bool:
    """Whether ``uri`` is written as a URI (``scheme://...``) rather than a plain path."""
    return isinstance(uri, str) and "://" in uri


def is_remote(uri: str | os.PathLike[str]) -> bool:
    """Whether ``uri`` names object storage (``s3://``, ``gs://``) rather than a local path."""
    return isinstance(uri, str) and urlsplit(uri).scheme.lower() in REMOTE_SCHEMES


@dataclass(frozen=True)
class Location:
    """A folder on a filesystem: ``fs`` (pyarrow) and ``path`` on it; ``uri`` is how it was named.

    Local locations also have :attr:`local_path`; everything else goes through ``fs``.
    """

    fs: Any  # pyarrow.fs.FileSystem (Any: pyarrow is imported only when a location is resolved)
    path: str
    uri: str
    scheme: str = "file"

    @property
    def remote(self) -> bool:
        return self.scheme != "file"

    @property
    def local_path(self) -> Path:
        if self.remote:
            raise ValueError(f"{self.uri} is object storage, not a local folder")
        return Path(self.path)

    def child(self, *names: str) -> Location:
        """The location ``names`` below this one (names are joined with ``/``)."""
        path = "/".join([self.path.rstrip("/"), *names])
        uri = "/".join([self.uri.rstrip("/"), *names])
        return Location(self.fs, str(Path(path)) if not self.remote else path, uri, self.scheme)

    def __truediv__(self, name: str) -> Location:
        return self.child(name)

    def __str__(self) -> str:
        return self.uri

    def files(self) -> list[pafs.FileInfo]:
        """Every file below this location (recursively) with its size; empty when there is none.

        Raises:
            StorageError: the store refused (credentials, a missing bucket), naming the fix.
        """
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(self.path, recursive=True, allow_not_found=True)
        try:
            found = [info for info in self.fs.get_file_info(selector) if info.type == pafs.FileType.File]
            bucket = self.path.split("/", 1)[0]
            # A missing bucket lists as empty: say so rather than read nothing from a typo forever.
            if not found and self.remote and self.fs.get_file_info(bucket).type == pafs.FileType.NotFound:
                raise FileNotFoundError(f"bucket {bucket!r} does not exist (or these credentials cannot see it)")
        except OSError as err:
            raise self.error("listing", err) from err
        return found

    def write_bytes(self, name: str, data: bytes) -> str:
        """Write ``data`` to ``name`` below this location; readers see it whole or not at all (local:
        a temporary file and a rename; object storage: one upload). Returns the path written.

        Raises:
            StorageError: the store refused the write.
        """
        target = self.child(name)
        if not self.remote:
            atomic_write_bytes(target.path, data)
            return target.path
        try:
            stream = self.fs.open_output_stream(target.path)
            stream.write(data)
            stream.close()  # the object is uploaded, and appears, here
        except OSError as err:
            raise self.error(f"writing {name}", err) from err
        return target.path

    def read_bytes(self, path: str) -> bytes:
        """The bytes of ``path`` (a path on :attr:`fs`, as :meth:`files` lists them).

        Raises:
            FileNotFoundError: no such file (retention may have deleted it).
        """
        with self.fs.open_input_stream(path) as stream:
            return stream.read()

    def delete(self, path: str) -> None:
        """Delete ``path`` (a path on :attr:`fs`); a missing file is no error."""
        try:
            self.fs.delete_file(path)
        except FileNotFoundError:
            pass

    def error(self, what: str, err: BaseException) -> StorageError:
        hint = _CREDENTIALS_HINT.get("gs" if self.scheme == "gcs" else self.scheme)
        return StorageError(f"{what} {self.uri} failed: {err}" + (f"; check access: {hint}" if hint else ""))


def location(uri: str | os.PathLike[str], what: str = "storage location") -> Location:
    """The :class:`Location` of a local path or a ``s3://``/``gs://`` URI (see the module doc).

    Raises:
        ValueError: ``uri`` is empty, has a scheme that is not supported, or names no bucket; the
            message names ``what``, the value and the forms accepted.
    """
    text = os.fspath(uri)
    if not str(text).strip():
        raise ValueError(f"{what} is empty; expected {_EXPECTED}")
    if not isinstance(text, str) or "://" not in text:
        return _local(Path(text).expanduser(), str(text))
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"{what} {text!r} names host {parts.netloc!r}; a file URI is file:///absolute/path")
        return _local(Path(parts.path), text)
    if scheme not in REMOTE_SCHEMES:
        raise ValueError(f"{what} {text!r} has scheme {scheme!r}, which is not supported; expected {_EXPECTED}")
    if not parts.netloc or "@" in parts.netloc or ":" in parts.netloc:
        raise ValueError(f"{what} {text!r} names no bucket (or puts credentials or a port in it); expected "
                         f"{scheme}://bucket/prefix (credentials and the endpoint come from the environment)")
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = sorted(set(options) - {"endpoint_override"})
    if unknown:
        raise ValueError(f"{what} {text!r} has unknown options {unknown}; the one option is endpoint_override")
    path = f"{parts.netloc}/{parts.path.strip('/')}".rstrip("/")
    if any(p in (".", "..") for p in path.split("/")):
        raise ValueError(f"{what} {text!r} contains '.' or '..'; name the prefix plainly")
    clean = f"{scheme}://{path}"
    return Location(_remote_fs(scheme, options.get("endpoint_override")), path, clean, scheme)


def _local(path: Path, uri: str) -> Location:
    import pyarrow.fs as pafs

    return Location(pafs.LocalFileSystem(), str(path), uri, "file")


def _remote_fs(scheme: str, endpoint: str | None) -> Any:
    import pyarrow.fs as pafs

    if scheme == "s3":
        endpoint = endpoint or next((os.environ[v] for v in _ENDPOINT_VARS if os.environ.get(v)), None)
        if endpoint is None:
            return pafs.S3FileSystem()
        split = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        if split.scheme not in ("http", "https") or not split.netloc:
            raise ValueError(f"S3 endpoint {endpoint!r} is not a URL; expected http://host:port or https://host")
        return pafs.S3FileSystem(endpoint_override=split.netloc, scheme=split.scheme)
    return pafs.GcsFileSystem()


def record_name() -> str:
    """A unique object name, ``<epoch ns, 20 digits>-<8 hex>.json``, that sorts after every name this
    process made before (the clock, never going back, then a random part against other writers)."""
    global _last_ns
    with _name_lock:
        _last_ns = max(time.time_ns(), _last_ns + 1)
        return f"{_last_ns:020d}-{uuid.uuid4().hex[:8]}.json"


def is_record_name(name: str) -> bool:
    """Whether ``name`` (the last component of a path) is one :func:`record_name` makes; temporary
    files (dot-prefixed) and anything else are not."""
    return bool(_RECORD.match(name))


@dataclass
class RecordFolder:
    """Append-only JSON records under ``folder``: one object per record, named by :func:`record_name`.

    :meth:`append` writes a record whole or not at all (local: temporary file and rename; object
    storage: one upload), so readers never see part of one; :meth:`read` returns them oldest first.
    Objects never change once written, so each one is fetched once per instance and kept.
    Several writers may append to one folder: names are unique, and their order is the writers'
    clocks' order.
    """

    folder: Location
    _cache: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    def append(self, record: dict[str, Any]) -> str:
        """Write ``record`` (JSON; values it cannot encode become strings); the path written.

        Raises:
            StorageError: the store refused the write.
        """
        return self.folder.write_bytes(record_name(), (json.dumps(record, default=str) + "\n").encode())

    def paths(self) -> list[str]:
        """The paths of the records, oldest first (their names sort by time)."""
        found = [i.path for i in self.folder.files() if is_record_name(i.path.rsplit("/", 1)[-1])]
        return sorted(found, key=lambda p: p.rsplit("/", 1)[-1])

    def read(self) -> list[dict[str, Any]]:
        """Every record, oldest first; records deleted meanwhile are left out.

        Raises:
            ValueError: a record that is not a JSON object (written by something else), named.
            StorageError: the store refused the listing.
        """
        out = []
        for path in self.paths():
            if path not in self._cache:
                try:
                    data = self.folder.read_bytes(path)
                except FileNotFoundError:
                    continue
                where = f"{self.folder.scheme}://{path}"
                try:
                    record = json.loads(data)
                except json.JSONDecodeError as err:
                    raise ValueError(f"record {where} is not JSON ({err}); records are written whole, so this "
                                     "one was written by something else: move it away") from None
                if not isinstance(record, dict):
                    raise ValueError(f"record {where} holds {type(record).__name__}, expected a JSON object; "
                                     "move it away")
                self._cache[path] = record
            out.append(self._cache[path])
        return out
