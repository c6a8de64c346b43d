"""Storage locations: what is accepted, and the errors for what is not (no server needed: every case
here fails or resolves before any request)."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.inference.feedback import FeedbackLog
from modelyard.inference.log import InferenceLog
from modelyard.inference.store import model_root
from modelyard.monitor.incidents import IncidentStore
from modelyard.monitor.store import MonitorStore
from modelyard.rollout.state import StateStore
from modelyard.safety import UnsafeNameError
from modelyard.storage import Location, is_remote, location


def test_local_paths_and_file_uris_are_local(tmp_path):
    for given in (str(tmp_path), tmp_path, f"file://{tmp_path}"):
        loc = location(given)
        assert not loc.remote and loc.local_path == tmp_path
    assert location("~/x").local_path == Path("~/x").expanduser()
    assert isinstance(model_root(tmp_path, "fraud"), Path)
    assert not is_remote(str(tmp_path)) and is_remote("s3://b/p") and is_remote("gs://b/p")


def test_s3_uri_takes_the_endpoint_from_the_environment_or_the_uri(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    loc = location("s3://bucket/some/prefix/")
    assert loc.remote and loc.path == "bucket/some/prefix" and loc.uri == "s3://bucket/some/prefix"
    assert type(loc.fs).__name__ == "S3FileSystem"
    assert _options(loc)["endpoint_override"] == "127.0.0.1:9" and _options(loc)["scheme"] == "http"
    override = location("s3://bucket/p?endpoint_override=http://127.0.0.1:10")
    assert _options(override)["endpoint_override"] == "127.0.0.1:10"
    child = model_root("s3://bucket/p", "fraud") / "inferences"
    assert isinstance(child, Location) and child.path == "bucket/p/fraud/inferences"
    assert str(child) == "s3://bucket/p/fraud/inferences"


def _options(loc: Location) -> dict:
    return loc.fs.__reduce__()[1][0]  # pyarrow's S3FileSystem shows its options only when pickled


@pytest.mark.parametrize(("uri", "words"), [
    ("ftp://host/folder", ["scheme 'ftp'", "s3://bucket/prefix"]),
    ("hdfs://nn/x", ["scheme 'hdfs'", "not supported"]),
    ("s3://", ["names no bucket", "s3://bucket/prefix"]),
    ("s3:///prefix", ["names no bucket"]),
    ("s3://key:secret@bucket/p", ["credentials", "environment"]),
    ("s3://bucket/a/../b", ["'..'"]),
    ("s3://bucket/p?region=x", ["unknown options ['region']", "endpoint_override"]),
    ("file://otherhost/x", ["names host 'otherhost'", "file:///absolute/path"]),
    ("", ["is empty", "s3://bucket/prefix"]),
])
def test_a_malformed_or_unsupported_uri_is_refused_naming_what_is_expected(uri, words):
    with pytest.raises(ValueError) as err:
        location(uri, "inference log root")
    message = str(err.value)
    assert (uri == "" or repr(uri) in message) and "inference log root" in message
    for word in words:
        assert word in message


def test_an_endpoint_that_is_not_a_url_is_refused(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "ftp://127.0.0.1:9")
    with pytest.raises(ValueError, match="expected http://host:port"):
        location("s3://bucket/p")


def test_a_hostile_model_name_is_refused_under_a_remote_root_too():
    with pytest.raises(UnsafeNameError):
        model_root("s3://bucket/p", "../other")


@pytest.mark.parametrize("make", [
    lambda root: InferenceLog(root, "fraud"),
    lambda root: FeedbackLog(root, "fraud"),
    lambda root: MonitorStore(root, "fraud"),
    lambda root: StateStore(root),
    lambda root: IncidentStore(root, "fraud"),
])
def test_every_state_taking_a_uri_refuses_an_unknown_scheme_before_touching_the_disk(make, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="scheme 'ftp', which is not supported; expected a local path"):
        make("ftp://host/logs")
    assert list(tmp_path.iterdir()) == []


def test_records_are_whole_objects_read_back_in_order(tmp_path):
    from modelyard.storage import RecordFolder, is_record_name

    records = RecordFolder(location(tmp_path / "events"))
    assert records.read() == []  # a missing folder holds no record
    written = [records.append({"n": n, "when": tmp_path}) for n in range(5)]  # a Path is kept as its text
    names = [Path(w).name for w in written]
    assert names == sorted(names) and len(set(names)) == 5 and all(is_record_name(n) for n in names)
    (tmp_path / "events" / f".{names[0]}.x.tmp").write_text('{"n": ')  # a write that never finished
    (tmp_path / "events" / "notes.txt").write_text("not a record")
    again = RecordFolder(location(tmp_path / "events"))  # another process
    assert [r["n"] for r in again.read()] == [0, 1, 2, 3, 4] and again.read()[0]["when"] == str(tmp_path)
    assert [Path(p).name for p in again.paths()] == names


def test_a_record_that_is_not_json_is_an_error_naming_it(tmp_path):
    from modelyard.storage import RecordFolder, record_name

    name = record_name()
    (tmp_path / name).write_text("{half")
    with pytest.raises(ValueError, match=f"record file://{tmp_path}/{name} is not JSON.*move it away"):
        RecordFolder(location(tmp_path)).read()
    (tmp_path / name).write_text("[1, 2]")
    with pytest.raises(ValueError, match="holds list, expected a JSON object"):
        RecordFolder(location(tmp_path)).read()
