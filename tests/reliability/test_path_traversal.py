"""Path traversal: every name that becomes part of a filesystem path is refused before the disk is touched.

Each public entry point that turns a name into a path (model names, versions, snapshot refs and
digests, registry names, monitor folders, Triton extra files, external-data locations) is called with
each hostile value while an audit hook fails any filesystem event; the call must raise modelyard's
clear error (naming the value and what is expected) and the hook must see nothing. Symlinks can only
be judged on disk: a model, version, ref, snapshot, config, warmup or weights link that points out of
its root is refused, and no file outside the root is opened or written.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fs_audit_guard import FilesystemTouched, forbid_filesystem, record_filesystem, touched_inside
from reliability_helpers import EXAMPLE_ONNX, EXAMPLE_REPO

# Every form of "leave the folder" a name could take on its way in from a config, an HTTP route,
# a registry tag or a model file.
HOSTILE = [
    "..", "../x", "a/../..", "fraud/../../etc", "/etc/passwd", "//server/share", "%2e%2e", "%2e%2e%2fetc",
    "..%2f..%2f", "%252e%252e%252f", "a%2fb", "fraud#../../x", "fraud?x=1", "file:///etc/passwd",
    "s3://bucket/key", "http://host/x", "a\\b", "..\\..\\windows", "C:\\models", "a\x00b", "", " ", "\t\n",
    " fraud", "~root", ".hidden", ".", "a" * 129,
]


@pytest.fixture(scope="module")
def snapshot_input():
    """A tiny valid table and its schema (built before any guard: the guard is for the call only)."""
    from modelyard.data import make_transactions, transactions_schema

    return make_transactions(60, seed=1), transactions_schema()


def _entry_points(tmp: Path, snapshot_input: tuple[Any, Any]) -> dict[str, Callable[[str], Any]]:
    """Public entry point -> a call that hands it one hostile value (everything else valid)."""
    from modelyard import data, safety
    from modelyard.data.store import Snapshot, write_snapshot
    from modelyard.export import source
    from modelyard.inference.feedback import FeedbackLog
    from modelyard.inference.log import InferenceLog
    from modelyard.monitor.check import load_reference
    from modelyard.monitor.cli import print_history
    from modelyard.monitor.incidents import IncidentStore
    from modelyard.monitor.store import MonitorStore
    from modelyard.registry.register import register_onnx
    from modelyard.registry.store import history, model_version_info, set_alias
    from modelyard.serve.triton.repository import build_config, next_version, write_model_version

    frame, schema = snapshot_input
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    return {
        "data.write_snapshot(name)": lambda v: write_snapshot(frame, schema, name=v, store=tmp / "store"),
        "data.Snapshot.open(ref, allow_path=False)": lambda v: Snapshot.open(v, tmp / "store", allow_path=False),
        "data.run(DataConfig(name))": lambda v: data.run(data.DataConfig(dataset="transactions", name=v,
                                                                           store=str(tmp / "store"))),
        "triton.write_model_version(name)": lambda v: write_model_version(tmp / "repo", v, EXAMPLE_ONNX),
        "triton.write_model_version(version)": lambda v: write_model_version(tmp / "repo", "fraud", EXAMPLE_ONNX,
                                                                             version=v),
        "triton.write_model_version(extra_files)": lambda v: write_model_version(
            tmp / "repo", "fraud", EXAMPLE_ONNX, extra_files={v: EXAMPLE_ONNX}),
        "triton.next_version(name)": lambda v: next_version(tmp / "repo", v),
        "triton.build_config(name)": lambda v: build_config(v, EXAMPLE_ONNX, "cpu"),
        "export.find_run(run id)": lambda v: source.find_run(object(), v),
        "registry.register_onnx(name)": lambda v: register_onnx(
            v, EXAMPLE_ONNX, tracking_uri=uri, run_id=None, experiment="x", input_example=None,
            output_example=None, tags={}, card="", extra_artifacts=[]),
        "registry.set_alias(name)": lambda v: set_alias(v, "champion", "1", reason="test", tracking_uri=uri),
        "registry.set_alias(version)": lambda v: set_alias("fraud", "champion", v, reason="test", tracking_uri=uri),
        "registry.history(name)": lambda v: history(v, uri),
        "registry.model_version_info(name)": lambda v: model_version_info(v, "1", uri),
        "registry.model_version_info(version)": lambda v: model_version_info("fraud", v, uri),
        "monitor.load_reference(model)": lambda v: load_reference(v, "@champion", uri),
        "monitor.load_reference(reference)": lambda v: load_reference("fraud", v, uri),
        "monitor.MonitorStore(model)": lambda v: MonitorStore(tmp / "log", v),
        "inference.InferenceLog(model)": lambda v: InferenceLog(tmp / "log", v),
        "monitor.FeedbackLog(model)": lambda v: FeedbackLog(tmp / "log", v),
        "monitor.IncidentStore(model)": lambda v: IncidentStore(tmp / "state", v),
        "monitor.print_history(model)": lambda v: print_history(str(tmp / "state"), v),
        "safety.contained(root, relative)": lambda v: safety.contained(tmp / "root", v),
    }


ENTRY_POINTS = sorted(_entry_points(Path("/nonexistent"), (None, None)))


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_hostile_names_are_refused_before_any_filesystem_access(entry, tmp_path, snapshot_input, figures):
    """Each entry point that builds a path from a name refuses every hostile form of it (``..``,
    absolute, percent- and double-encoded, ``#``/``?``, URI schemes, backslashes, NUL, empty or
    whitespace, hidden, too long) with an error naming the value and the rule, before any file is
    opened, listed, created, renamed or removed."""
    from modelyard.safety import UnsafeNameError

    call = _entry_points(tmp_path, snapshot_input)[entry]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    failures, touched, refused = [], 0, 0
    for value in HOSTILE:
        with forbid_filesystem() as watch:
            try:
                call(value)
            except FilesystemTouched as err:
                failures.append(f"{value!r}: touched the filesystem before refusing it: {err}")
                continue
            except ValueError as err:  # UnsafeNameError is a ValueError; data.run lists config problems as one
                message = str(err)
                named = repr(value)[:12] in message
                explains = any(word in message for word in ("expected", "use "))
                if not (named and explains):
                    failures.append(f"{value!r}: {type(err).__name__} does not name the value and the rule: {message}")
                elif not isinstance(err, UnsafeNameError) and "data.run" not in entry:
                    failures.append(f"{value!r}: {type(err).__name__} instead of UnsafeNameError: {message}")
                else:
                    refused += 1
            except Exception as err:  # noqa: BLE001 - any other outcome is a finding, listed below
                failures.append(f"{value!r}: {type(err).__name__} instead of a refusal: {err}")
            else:
                failures.append(f"{value!r}: accepted")
        if watch.events:
            touched += 1
            failures.append(f"{value!r}: filesystem events {[e for e, _ in watch.events]}")
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    figures.record("hostile values tried", len(HOSTILE))
    figures.record("refused with a clear error", refused, bound=f"all {len(HOSTILE)}")
    figures.record("values that touched the filesystem", touched, bound="0")
    assert not failures, f"{entry}:\n" + "\n".join(failures)
    assert after == before, f"{entry} created {sorted(set(after) - set(before))}"


def test_plain_names_still_pass(tmp_path, snapshot_input):
    """The allow-list is not a deny-all: ordinary names, versions and relative paths are accepted."""
    from modelyard import safety
    from modelyard.data.store import Snapshot, write_snapshot
    from modelyard.serve.triton.repository import write_model_version

    for name in ("fraud", "fraud-detector_v2.1", "A9", "a" * 128):
        assert safety.check_name(name) == name
    assert safety.check_version("12") == "12" and safety.check_version(3) == "3"
    assert str(safety.check_relative("checkpoints/best.ckpt")) == "checkpoints/best.ckpt"
    frame, schema = snapshot_input
    snap = write_snapshot(frame, schema, name="tx_1.v2", store=tmp_path / "store")
    assert Snapshot.open("tx_1.v2", tmp_path / "store", allow_path=False).digest == snap.digest
    assert Snapshot.open(snap.digest[:8], tmp_path / "store", allow_path=False).digest == snap.digest
    written = write_model_version(tmp_path / "repo", "fraud-v2", EXAMPLE_ONNX,
                                  extra_files={"meta/x.json": EXAMPLE_ONNX})
    assert (written.version_dir / "meta" / "x.json").is_file()


# --- symlinks: they need the disk to be judged; nothing outside the root is read or written ---------------


@pytest.fixture
def outside(tmp_path) -> Path:
    """A folder outside every root of the test, with a file an attacker would like read or overwritten."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.txt").write_text("not for modelyard")
    return folder


def _snapshot_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_symlinked_triton_model_folder_is_refused_for_writing(tmp_path, outside, figures):
    """A Triton model folder that is a symlink out of the repository is refused by the export's writer:
    no version is listed, created or copied outside."""
    from modelyard.safety import PathEscapeError
    from modelyard.serve.triton.repository import next_version, write_model_version

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "fraud").symlink_to(outside, target_is_directory=True)
    before = _snapshot_of(outside)
    with record_filesystem() as watch:
        with pytest.raises(PathEscapeError, match="outside that folder"):
            write_model_version(repo, "fraud", EXAMPLE_ONNX)
        with pytest.raises(PathEscapeError):
            next_version(repo, "fraud")
    hits = touched_inside(watch, outside)
    figures.record("filesystem events under the link target", len(hits), bound="0")
    assert hits == [] and _snapshot_of(outside) == before


def test_symlinks_out_of_a_triton_repository_are_reported_not_followed(tmp_path, outside, figures):
    """``modelyard triton validate`` reports a model folder, version folder, config.pbtxt, warmup file or
    external-data file that links out of its folder, and opens nothing behind such a link."""
    import onnx

    from modelyard.serve.triton.validate import validate_repository

    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLE_REPO, repo / "good")
    (repo / "good" / "config.pbtxt").write_text(
        (repo / "good" / "config.pbtxt").read_text().replace("example_fraud", "good"))
    # 1. a whole model folder linked out
    shutil.copytree(repo / "good", outside / "linked_model")
    (outside / "linked_model" / "config.pbtxt").write_text(
        (outside / "linked_model" / "config.pbtxt").read_text().replace('"good"', '"linked_model"'))
    (repo / "linked_model").symlink_to(outside / "linked_model", target_is_directory=True)
    # 2. a version folder linked out
    shutil.copytree(repo / "good", repo / "version_link")
    (repo / "version_link" / "config.pbtxt").write_text(
        (repo / "version_link" / "config.pbtxt").read_text().replace('"good"', '"version_link"'))
    shutil.move(repo / "version_link" / "1", outside / "v1")
    (repo / "version_link" / "1").symlink_to(outside / "v1", target_is_directory=True)
    # 3. config.pbtxt linked out
    shutil.copytree(repo / "good", repo / "config_link")
    shutil.move(repo / "config_link" / "config.pbtxt", outside / "config.pbtxt")
    (repo / "config_link" / "config.pbtxt").symlink_to(outside / "config.pbtxt")
    # 4. external data linked out
    shutil.copytree(repo / "good", repo / "weights_link")
    (repo / "weights_link" / "config.pbtxt").write_text(
        (repo / "weights_link" / "config.pbtxt").read_text().replace('"good"', '"weights_link"'))
    model_path = repo / "weights_link" / "1" / "model.onnx"
    onnx.save_model(onnx.load(str(model_path)), str(model_path), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    os.replace(model_path.parent / "weights.bin", outside / "weights.bin")
    (model_path.parent / "weights.bin").symlink_to(outside / "weights.bin")
    # 5. a warmup file linked out (if the example config has warmup files)
    warmups = sorted((repo / "good" / "warmup").glob("*")) if (repo / "good" / "warmup").is_dir() else []
    if warmups:
        shutil.copytree(repo / "good", repo / "warmup_link")
        (repo / "warmup_link" / "config.pbtxt").write_text(
            (repo / "warmup_link" / "config.pbtxt").read_text().replace('"good"', '"warmup_link"'))
        target = repo / "warmup_link" / "warmup" / warmups[0].name
        os.replace(target, outside / "warmup.bin")
        target.symlink_to(outside / "warmup.bin")

    with record_filesystem() as watch:
        problems = validate_repository(repo)
    by_model: dict[str, list[str]] = {}
    for problem in problems:
        by_model.setdefault(problem.model, []).append(str(problem))
    expected = {"linked_model", "version_link", "config_link", "weights_link", *(["warmup_link"] if warmups else [])}
    opened_outside = touched_inside(watch, outside)
    figures.record("links out of the repository", len(expected))
    figures.record("reported", len(expected & set(by_model)), bound=f"all {len(expected)}")
    figures.record("files opened behind a link", len(opened_outside), bound="0")
    assert "good" not in by_model, by_model.get("good")
    assert set(by_model) == expected, by_model
    assert all(any("outside" in text for text in by_model[m]) for m in expected), by_model
    assert opened_outside == [], opened_outside


def test_symlinked_monitor_folders_are_refused(tmp_path, outside, figures):
    """The inference log, feedback and monitor state folders of a model that is a symlink out of their
    root are refused before anything is read or written there."""
    from modelyard.inference.feedback import FeedbackLog
    from modelyard.inference.log import InferenceLog
    from modelyard.monitor.incidents import IncidentStore
    from modelyard.monitor.store import MonitorStore
    from modelyard.safety import PathEscapeError

    for root in ("log", "state"):
        (tmp_path / root).mkdir()
        (tmp_path / root / "fraud").symlink_to(outside, target_is_directory=True)
    before = _snapshot_of(outside)
    makers = [lambda: MonitorStore(tmp_path / "log", "fraud"), lambda: InferenceLog(tmp_path / "log", "fraud"),
              lambda: FeedbackLog(tmp_path / "log", "fraud"), lambda: IncidentStore(tmp_path / "state", "fraud")]
    refused = 0
    with record_filesystem() as watch:
        for make in makers:
            with pytest.raises(PathEscapeError, match="outside that folder"):
                make()
            refused += 1
    figures.record("monitor entry points refusing a linked model folder", refused, bound=f"all {len(makers)}")
    assert touched_inside(watch, outside) == [] and _snapshot_of(outside) == before


def test_symlinks_out_of_the_data_store_are_not_followed(tmp_path, outside, snapshot_input, figures):
    """A ref file or snapshot folder that links out of the data store is never read, and a store whose
    ``snapshots`` or ``refs`` folder links out is not written to."""
    from modelyard.data.store import Snapshot, SnapshotNotFoundError, list_refs, write_snapshot
    from modelyard.safety import PathEscapeError

    frame, schema = snapshot_input
    store = tmp_path / "store"
    real = write_snapshot(frame, schema, name="tx", store=store)
    (store / "refs" / "stolen").symlink_to(outside / "secret.txt")
    shutil.copytree(real.path, outside / ("f" * 64))
    (store / "snapshots" / ("f" * 64)).symlink_to(outside / ("f" * 64), target_is_directory=True)
    with record_filesystem() as watch:
        refs = list_refs(store)
        with pytest.raises(SnapshotNotFoundError):
            Snapshot.open("stolen", store, allow_path=False)
        with pytest.raises(SnapshotNotFoundError):
            Snapshot.open("ffffff", store, allow_path=False)
    read_outside = touched_inside(watch, outside)

    linked = tmp_path / "linked_store"
    linked.mkdir()
    (linked / "snapshots").symlink_to(outside, target_is_directory=True)
    before = _snapshot_of(outside)
    with pytest.raises(PathEscapeError):
        write_snapshot(frame, schema, name="tx", store=linked)
    figures.record("files read behind a link", len(read_outside), bound="0")
    assert refs == {"tx": real.digest}
    assert read_outside == []
    assert _snapshot_of(outside) == before


def test_the_guard_sees_filesystem_access(tmp_path):
    """The audit guard itself: an open, a listing and a mkdir inside the block are caught and recorded,
    so a refusal above cannot pass because the hook was blind."""
    with forbid_filesystem() as watch:
        for action in (lambda: open(tmp_path / "x", "w"), lambda: os.listdir(tmp_path),
                       lambda: (tmp_path / "d").mkdir()):
            with pytest.raises(FilesystemTouched):
                action()
    assert [event for event, _ in watch.events] == ["open", "os.listdir", "os.mkdir"]
    assert list(tmp_path.iterdir()) == []


HOSTILE_LOCATIONS = ["../secret.bin", "/etc/passwd", "a/../../secret.bin", "file:///etc/passwd", "..\\secret.bin",
                     "%2e%2e/secret.bin", "weights.bin#../../x", "C:\\secret.bin"]


def test_hostile_external_data_locations_are_refused(tmp_path, outside, figures):
    """An ONNX model whose external-data location leaves its folder (``..``, absolute, URI, backslash,
    encoded, fragment) is refused by the Triton writer before anything is written, and reported by the
    validator without the file behind the location being opened."""
    import onnx

    from modelyard.safety import UnsafeNameError
    from modelyard.serve.triton.repository import write_model_version
    from modelyard.serve.triton.validate import validate_repository

    refused = reported = writes = opened_outside = 0
    for index, location in enumerate(HOSTILE_LOCATIONS):
        source = tmp_path / f"src{index}" / "model.onnx"
        source.parent.mkdir()
        onnx.save_model(onnx.load(str(EXAMPLE_ONNX)), str(source), save_as_external_data=True,
                        all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
        model = onnx.load(str(source), load_external_data=False)
        for tensor in model.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        onnx.save_model(model, str(source))
        repo = tmp_path / f"repo{index}"
        with record_filesystem() as watch:
            with pytest.raises(UnsafeNameError, match="external data location"):
                write_model_version(repo, "fraud", source)
        refused += 1
        written = [e for e, args in watch.events if e != "open" or "w" in str(args[1]) or "a" in str(args[1])]
        writes += len(written)
        assert written == [] and not repo.exists(), (location, written)

        shutil.copytree(EXAMPLE_REPO, repo / "example_fraud")
        shutil.copyfile(source, repo / "example_fraud" / "1" / "model.onnx")
        with record_filesystem() as watch:
            problems = validate_repository(repo)
        opened_outside += len(touched_inside(watch, outside)) + len([p for p in watch.paths() if "passwd" in p])
        if any("external data" in p.field and repr(location) in p.found for p in problems):
            reported += 1
    figures.record("hostile external-data locations", len(HOSTILE_LOCATIONS))
    figures.record("refused by the writer", refused, bound=f"all {len(HOSTILE_LOCATIONS)}")
    figures.record("reported by the validator", reported, bound=f"all {len(HOSTILE_LOCATIONS)}")
    figures.record("write events", writes, bound="0")
    figures.record("files opened behind a location", opened_outside, bound="0")
    assert reported == len(HOSTILE_LOCATIONS) and opened_outside == 0
