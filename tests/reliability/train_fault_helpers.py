"""Helpers of the training / export / MLflow-outage fault tests: slow-write injection into a CLI
subprocess, its process tree, a data store, a real ``mlflow server`` that can be stopped and restarted
on the same port, and a model that stops training when the test says so."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

from modelyard.models import TabularMLP

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TRAIN_CONFIG = ROOT / "configs" / "train" / "transactions.yaml"
STOP_FILE_ENV = "MODELYARD_TEST_STOP_FILE"

# Written into a tmp folder put first on the subprocess's PYTHONPATH: Python imports ``sitecustomize``
# at startup, before the program. It wraps the three functions the project's file writes go through
# (``torch.save`` for checkpoints, ``onnx.save_model`` for ONNX files, ``shutil.copyfileobj`` for
# ``atomic_copy``) and makes the Nth write whose target path matches a pattern slow: half the bytes
# are written and flushed, a marker file naming the target is dropped (the test kills the process
# then), and the rest follows in small chunks a second apart. The wrapped functions still write to
# exactly the file the caller gave them: if the code wrote in place, the kill would leave a truncated
# file under its final name and the test would see it. Every matched write is listed in a trace file.
SITECUSTOMIZE = textwrap.dedent('''
    import io
    import os
    import re
    import time

    _MATCH = re.compile(os.environ["MODELYARD_FAULT_MATCH"])
    _NTH = int(os.environ.get("MODELYARD_FAULT_NTH", "1"))
    _MARKER = os.environ["MODELYARD_FAULT_MARKER"]
    _seen = 0


    def _trace(target):
        with open(_MARKER + ".trace", "a") as handle:
            handle.write(f"{os.getpid()} {target}\\n")


    def _target(f):
        # a handle from os.fdopen (as atomic writers use) is named by its descriptor number
        if isinstance(f, (str, os.PathLike)):
            return os.fspath(f)
        try:
            return os.readlink(f"/proc/self/fd/{f.fileno()}")
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            return None


    def _matches(target):
        global _seen
        if not isinstance(target, str) or not _MATCH.search(target):
            return False
        _seen += 1
        _trace(target)
        return _seen == _NTH


    def _slow_write(data, handle, target):
        half = len(data) // 2
        handle.write(data[:half])
        handle.flush()
        os.fsync(handle.fileno())
        with open(_MARKER + ".part", "w") as marker:
            marker.write(f"{os.getpid()} {target} {len(data)}")
        os.replace(_MARKER + ".part", _MARKER)
        for start in range(half, len(data), 4096):
            time.sleep(1.0)
            handle.write(data[start:start + 4096])


    def _wrap_torch():
        import torch

        original = torch.save

        def save(obj, f, *args, **kwargs):
            target = _target(f)
            if not _matches(target):
                return original(obj, f, *args, **kwargs)
            buffer = io.BytesIO()
            original(obj, buffer, *args, **kwargs)
            if isinstance(f, (str, os.PathLike)):
                with open(f, "wb") as handle:
                    _slow_write(buffer.getvalue(), handle, target)
            else:
                _slow_write(buffer.getvalue(), f, target)

        torch.save = save


    def _wrap_onnx():
        import onnx

        original = onnx.save_model

        def save_model(proto, f, *args, **kwargs):
            target = _target(f)
            if args or kwargs.get("save_as_external_data") or not _matches(target):
                return original(proto, f, *args, **kwargs)
            data = proto if isinstance(proto, bytes) else proto.SerializeToString()
            if isinstance(f, (str, os.PathLike)):
                with open(f, "wb") as handle:
                    _slow_write(data, handle, target)
            else:
                _slow_write(data, f, target)

        onnx.save_model = save_model
        onnx.save = save_model


    def _wrap_copy():
        import shutil

        original = shutil.copyfileobj

        def copyfileobj(fsrc, fdst, length=0):
            target = _target(fdst)
            if not _matches(target):
                return original(fsrc, fdst, length)
            _slow_write(fsrc.read(), fdst, target)

        shutil.copyfileobj = copyfileobj


    for _wrap in (_wrap_copy, _wrap_torch, _wrap_onnx):
        if _wrap.__name__.removeprefix("_wrap_") in os.environ.get("MODELYARD_FAULT_HOOKS", "copy,torch,onnx"):
            _wrap()
''')


def slow_write_env(folder: Path, match: str, nth: int = 1, hooks: str = "copy,torch,onnx"
                   ) -> tuple[dict[str, str], Path]:
    """Environment that slows the ``nth`` write whose target matches the regex ``match``; and the marker
    file that appears when that write is half done."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    marker = folder / "write-started"
    marker.unlink(missing_ok=True)
    env = cli_env(MODELYARD_FAULT_MATCH=match, MODELYARD_FAULT_NTH=str(nth), MODELYARD_FAULT_MARKER=str(marker),
                  MODELYARD_FAULT_HOOKS=hooks)
    env["PYTHONPATH"] = os.pathsep.join([str(folder), env["PYTHONPATH"]])
    return env, marker


def cli_env(**extra: str) -> dict[str, str]:
    """This environment without MLflow/Ray/job settings, with this folder importable (the test model)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "MODELYARD_JOB_DIR", "MODELYARD_MLFLOW_RUN_ID")
           and not k.startswith("MODELYARD_FAULT_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    return env | extra


def modelyard_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "modelyard.cli", *args]


def start_cli(args: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    """``modelyard ARGS`` in its own session (a kill of its group reaches exactly what it started)."""
    return subprocess.Popen(modelyard_cmd(*args), cwd=cwd, env=env, start_new_session=True,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, text=True)


def run_cli(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300
            ) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(modelyard_cmd(*args), cwd=cwd, env=env or cli_env(), capture_output=True, text=True,
                          timeout=timeout)
    print(proc.stdout[-4000:], proc.stderr[-6000:], sep="\n")
    return proc


def wait_for_file(path: Path, proc: subprocess.Popen, log: Path, timeout_s: float) -> Path:
    """Wait until ``path`` exists; AssertionError with the process output if it exits first or time runs out."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the process exited ({proc.returncode}) before {path.name} appeared:\n"
                                 f"{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path.name} did not appear within {timeout_s:g} s:\n{log.read_text()[-4000:]}")
        time.sleep(0.02)
    return path


def wait_glob(root: Path, pattern: str, proc: subprocess.Popen, log: Path, timeout_s: float = 240) -> Path:
    """The first path under ``root`` matching ``pattern``, waiting for training to write it; fails with
    the log's tail when the process exits first or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = list(root.glob(pattern))
        if found:
            return found[0]
        if proc.poll() is not None:
            raise AssertionError(f"training exited ({proc.returncode}) before {pattern}:\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{pattern} did not appear within {timeout_s:g} s:\n{log.read_text()[-4000:]}")
        time.sleep(0.05)


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL, wait_s: float = 60) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    proc.wait(timeout=wait_s)


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (read from /proc: children of children included)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its parent counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def make_store(root: Path, rows: int, seed: int = 0) -> Path:
    from modelyard.data import DataConfig
    from modelyard.data import run as make_snapshot

    make_snapshot(DataConfig(dataset="transactions", rows=rows, seed=seed, store=str(root)))
    return root


class StoppableMLP(TabularMLP):
    """The built-in model, but training stops at the end of an epoch once the file named by
    ``$MODELYARD_TEST_STOP_FILE`` exists: a job whose length the test decides (``max_epochs`` stays
    the upper bound)."""

    def on_train_epoch_end(self) -> None:
        stop = os.environ.get(STOP_FILE_ENV)
        if stop and Path(stop).exists():
            self.trainer.should_stop = True


class MlflowServer:
    """A real ``mlflow server`` on 127.0.0.1 (SQLite backend, proxied artifacts) in its own session:
    stop it (by its process group) and start it again on the same port with the same stores."""

    def __init__(self, root: Path, port: int) -> None:
        self.root, self.port = root, port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        root.mkdir(parents=True, exist_ok=True)

    def start(self, timeout_s: float = 120) -> float:
        """Start and wait until ``/health`` answers; the seconds that took."""
        t0 = time.monotonic()
        mlflow_bin = Path(sys.executable).with_name("mlflow")
        self.proc = subprocess.Popen(
            [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.root / 'backend.db'}",
             "--artifacts-destination", str(self.root / "artifacts")],
            cwd=self.root, stdout=subprocess.DEVNULL, stderr=open(self.root / "server.log", "a"),
            start_new_session=True)
        while not self.healthy():
            if self.proc.poll() is not None or time.monotonic() - t0 > timeout_s:
                log = (self.root / "server.log").read_text()[-3000:]
                self.stop()
                raise RuntimeError(f"mlflow server did not become ready on port {self.port}:\n{log}")
            time.sleep(0.3)
        return time.monotonic() - t0

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM to the server's group (it and the workers it forked), SIGKILL after 30 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
