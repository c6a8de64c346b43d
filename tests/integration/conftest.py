"""Integration tier: the CLI in real subprocesses, real Lightning DDP, Ray, MLflow stores and servers."""

from __future__ import annotations

from pathlib import Path

import pytest

from any_models import SharedModels
from modelyard.data import DataConfig
from modelyard.data import run as make_snapshot


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> Path:
    """A data store with a 3,000-row `transactions` snapshot, shared read-only by the tests."""
    root = tmp_path_factory.mktemp("data") / "store"
    make_snapshot(DataConfig(dataset="transactions", rows=3000, seed=0, store=str(root)))
    return root


@pytest.fixture(scope="session")
def any_models(tmp_path_factory) -> SharedModels:
    """``any_models("text" | "images" | "sensors")``: that workload's small model, trained and exported
    by the CLI the first time a test of the session asks for it (any_models.py); read-only for tests."""
    return SharedModels(tmp_path_factory.mktemp("any_models"))


S3_BUCKET = "modelyard-test"


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3-protocol server (moto's, from its pip package) on 127.0.0.1 at a free port, stopped at
    the end of the session; the code under test reaches it only through ``s3://`` URIs and the
    environment, as it would a MinIO or AWS."""
    moto_server = pytest.importorskip("moto.server", reason="the S3 test server comes with the dev extra "
                                      "(moto[server])")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(s3_endpoint, monkeypatch, tmp_path):
    """``s3://modelyard-test/<test>`` with the environment a client of an S3-compatible store has; local
    journals and working folders under the test's own folder."""
    import pyarrow.fs as pafs

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "modelyard")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "modelyard-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask a cloud metadata address
    monkeypatch.setenv("MODELYARD_LOG_JOURNAL_DIR", str(tmp_path / "journal"))
    monkeypatch.setenv("MODELYARD_MONITOR_WORK_DIR", str(tmp_path / "work"))
    admin = pafs.S3FileSystem(endpoint_override=s3_endpoint.removeprefix("http://"), scheme="http",
                              allow_bucket_creation=True)
    if admin.get_file_info(S3_BUCKET).type == pafs.FileType.NotFound:
        admin.create_dir(S3_BUCKET)
    return f"s3://{S3_BUCKET}/{tmp_path.name}"
