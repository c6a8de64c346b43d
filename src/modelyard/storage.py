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

Nothing heavy is imported here at module level: pyarrow loads when a location is resolved.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from modelyard._io import atomic_write_bytes

if TYPE_CHECKING:
    import pyarrow.fs as pafs

__all__ = ["REMOTE_SCHEMES", "Location", "StorageError", "is_remote", "is_uri", "location"]

REMOTE_SCHEMES = ("s3", "gs", "gcs")
_ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
_EXPECTED = "a local path, file:///path, s3://bucket/prefix or gs://bucket/prefix"
_CREDENTIALS_HINT = {
    "s3": "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or run with an instance role), and "
          "AWS_ENDPOINT_URL=http://host:port for an S3-compatible store",
    "gs": "set GOOGLE_APPLICATION_CREDENTIALS to a service account key (or run with a workload identity)",
}


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
