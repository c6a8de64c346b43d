"""The monitor's state: the local folder keeps its files; on object storage every record is an object
of its own (here an in-memory filesystem without renames stands in for the store; the real S3 protocol
is tests/integration/test_monitor_state_s3.py)."""

from __future__ import annotations

import json

import pytest

from modelyard.monitor.incidents import IncidentStore
from modelyard.storage import Location


@pytest.fixture
def bucket():
    """A Location on an in-memory filesystem that behaves as object storage (``s3`` scheme)."""
    import fsspec
    import pyarrow.fs as pafs

    memory = fsspec.filesystem("memory")
    memory.store.clear()
    memory.pseudo_dirs[:] = [""]
    memory.mkdir("/bucket")
    yield Location(pafs.PyFileSystem(pafs.FSSpecHandler(memory)), "bucket/monitor", "s3://bucket/monitor", "s3")
    memory.store.clear()


def _steps(store: IncidentStore) -> None:
    store.record_check({"time": 1.0, "summary": "quiet", "fired": False})
    store.record_check({"time": 2.0, "summary": "drift", "fired": True})
    incident = store.open("1", [{"name": "drift", "detail": "2 features"}], now=2.0)
    store.event("incident", "opened", incident, now=2.0)
    incident.state = "trained"
    store.save(incident)
    store.event("trained", "retrained", incident, now=3.0, run_id="r1")


def test_a_local_folder_keeps_its_files(tmp_path):
    store = IncidentStore(tmp_path / "state", "fraud")
    _steps(store)
    root = tmp_path / "state" / "fraud"
    assert sorted(p.name for p in root.iterdir()) == ["checks.jsonl", "events.jsonl", "incidents.json"]
    assert [i["state"] for i in json.loads((root / "incidents.json").read_text())] == ["trained"]
    assert [json.loads(line)["kind"] for line in (root / "events.jsonl").read_text().splitlines()] == \
        ["incident", "trained"]
    assert store.index_file() == root / "incidents.json"
    assert store.where("reports/latest/report.html") == f"{root}/reports/latest/report.html"
    folder = store.incident_dir(store.all()[0])
    assert folder == root / "incidents" / "0001" and store.latest_report_dir == root / "reports" / "latest"
    folder.mkdir(parents=True)
    (folder / "labelled.parquet").write_bytes(b"rows")
    assert store.publish("incidents/0001") == 0  # nothing to upload: the folder is the state
    assert store.read_bytes("incidents/0001/labelled.parquet") == b"rows" and store.read_bytes("nope") is None


def test_object_storage_keeps_one_object_per_record(bucket, tmp_path):
    store = IncidentStore(bucket, "fraud", work=tmp_path / "work")
    _steps(store)
    paths = sorted(i.path.lstrip("/").removeprefix("bucket/monitor/fraud/") for i in bucket.files())
    kinds = [p.split("/")[1] for p in paths]
    assert kinds.count("checks") == 2 and kinds.count("events") == 2 and kinds.count("incidents") == 2
    assert all(p.startswith("records/") and p.endswith(".json") for p in paths)

    again = IncidentStore(bucket, "fraud", work=tmp_path / "elsewhere")  # another process, another machine
    (incident,) = again.all()  # the newest record of an id is the incident
    assert (incident.id, incident.state) == (1, "trained") and again.current().id == 1
    assert [e["kind"] for e in again.events()] == ["incident", "trained"] and again.events()[1]["run_id"] == "r1"
    assert [c["summary"] for c in again.checks()] == ["quiet", "drift"]
    assert json.loads(again.index_file().read_text())[0]["state"] == "trained"
    assert again.where() == "s3://bucket/monitor/fraud"


def test_incident_files_are_uploaded_with_each_save_and_downloaded_elsewhere(bucket, tmp_path):
    store = IncidentStore(bucket, "fraud", work=tmp_path / "work")
    incident = store.open("1", [], now=1.0)
    folder = store.incident_dir(incident)
    assert folder == tmp_path / "work" / "incidents" / "0001"
    (folder / "report").mkdir(parents=True)
    (folder / "report" / "report.json").write_text('{"drift": {}}')
    (folder / "labelled.parquet").write_bytes(b"rows")
    (folder / ".labelled.parquet.x.tmp").write_bytes(b"half")  # a temporary is never uploaded
    assert store.read_bytes("incidents/0001/labelled.parquet") is None  # not before the step ends
    incident.state = "snapshot"
    store.save(incident)
    assert store.read_bytes("incidents/0001/labelled.parquet") == b"rows"
    assert store.read_bytes("incidents/0001/report/report.json") == b'{"drift": {}}'
    assert store.read_bytes("incidents/0001/.labelled.parquet.x.tmp") is None
    assert store.publish("incidents/0001") == 0  # unchanged files are not uploaded again

    store.latest_report_dir.mkdir(parents=True)
    (store.latest_report_dir / "report.html").write_text("<html>")
    store.publish_report()
    assert store.read_bytes("reports/latest/report.html") == b"<html>"

    restarted = IncidentStore(bucket, "fraud", work=tmp_path / "elsewhere")
    moved = restarted.incident_dir(restarted.current())
    assert (moved / "labelled.parquet").read_bytes() == b"rows"
    assert (moved / "report" / "report.json").is_file() and not (moved / ".labelled.parquet.x.tmp").exists()
    assert restarted.publish("incidents/0001") == 0  # what it downloaded is not uploaded back


def test_a_new_incident_starts_from_an_empty_working_folder(bucket, tmp_path):
    leftover = tmp_path / "work" / "incidents" / "0001"
    leftover.mkdir(parents=True)
    (leftover / "labelled.parquet").write_bytes(b"an older state's rows")  # that state was deleted since
    store = IncidentStore(bucket, "fraud", work=tmp_path / "work")
    incident = store.open("1", [], now=1.0)
    assert not store.incident_dir(incident).exists()
    store.save(incident)
    assert store.read_bytes("incidents/0001/labelled.parquet") is None


def test_history_reads_the_timeline_and_the_report_from_object_storage(bucket, tmp_path, capsys):
    from modelyard.monitor.cli import print_history

    store = IncidentStore(bucket, "fraud", work=tmp_path / "work")
    _steps(store)
    incident = store.all()[0]
    report = {"drift": {"features": [{"name": "amount", "drifted": True, "test": "ks", "statistic": 0.4,
                                      "p_adjusted": 1e-9, "psi": 0.7}]}}
    folder = store.incident_dir(incident)
    (folder / "report").mkdir(parents=True)
    (folder / "report" / "report.json").write_text(json.dumps(report))
    store.save(incident)
    print_history(bucket, "fraud", with_checks=True)
    out = capsys.readouterr().out
    for text in ("1 incident(s), 2 check(s) (s3://bucket/monitor/fraud)", "opened", "amount", "retrained"):
        assert text in out, out
