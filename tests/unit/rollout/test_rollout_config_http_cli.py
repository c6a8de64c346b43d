"""Rollout configuration, the HTTP traffic control against a local http.server, and the CLI handler."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from modelyard.config import ConfigError, parse_config
from modelyard.rollout import (
    HttpTrafficControl,
    ManualAction,
    RolloutConfig,
    RolloutController,
    RolloutError,
    TrafficError,
    expand_spellings,
    parse_steps,
)
from modelyard.rollout.cli import main

ROOT = Path(__file__).resolve().parents[3]
DEFAULT = ROOT / "configs/rollout/default.yaml"


def test_default_config_loads_with_the_command_on_its_first_line():
    first = DEFAULT.read_text().splitlines()[0]
    assert first == "# modelyard rollout start --config configs/rollout/default.yaml"
    cfg = parse_config(RolloutConfig, ["--config", str(DEFAULT)])
    assert cfg.model == "fraud" and cfg.candidate == "@challenger" and cfg.steps == [0.05, 0.25, 0.5, 1.0]
    # Every key of the file carries a comment.
    for line in DEFAULT.read_text().splitlines()[2:]:
        assert "#" in line, line


@pytest.mark.parametrize(("given", "expected"), [
    ("5,25,50,100", [0.05, 0.25, 0.5, 1.0]), ("0.1,1", [0.1, 1.0]), ([10, 100], [0.1, 1.0]), ("1", [1.0])])
def test_steps_as_percents_or_fractions(given, expected):
    assert parse_steps(given) == pytest.approx(expected)


def test_steps_override_on_the_command_line():
    cfg = parse_config(RolloutConfig, expand_spellings(["--config", str(DEFAULT), "--steps", "10,50,100",
                                                        "--candidate", "7"]))
    assert cfg.steps == pytest.approx([0.1, 0.5, 1.0]) and cfg.candidate == "7"


@pytest.mark.parametrize(("argv", "words"), [
    (["--steps", "50,25,100"], ["steps", "strictly increasing"]),
    (["--steps", "0.5,1.5,2"], ["steps", "end at 1.0"]),  # read as percents (one is above 1): ends at 2%
    (["--steps", "[0.5, 1.2]"], ["steps", "end at 1.0"]),
    (["--steps", "-5,100"], ["steps", "out of range"]),
    (["--min_agreement", "1.5"], ["min_agreement", "1.5"]),
    (["--max_latency_ratio_p95", "0.5"], ["max_latency_ratio_p95"]),
    (["--min_requests", "0"], ["min_requests"]),
    (["--max_wait_s", "5"], ["max_wait_s", "interval_s"]),
    (["--min_requets", "5"], ["min_requets", "min_requests"]),
])
def test_config_errors_name_the_key(argv, words):
    with pytest.raises(ConfigError) as err:
        parse_config(RolloutConfig, expand_spellings(["--config", str(DEFAULT), *argv]))
    for word in words:
        assert word in str(err.value)


def test_model_is_required_and_abort_needs_a_reason():
    with pytest.raises(ConfigError, match="model is required"):
        parse_config(RolloutConfig, [])
    with pytest.raises(ConfigError, match="reason is required"):
        parse_config(ManualAction, ["--model", "fraud"])
    cfg = parse_config(ManualAction, ["--model", "fraud", "--reason", "pager"])
    assert cfg.reason == "pager" and cfg.who is None


class _Ingress(BaseHTTPRequestHandler):
    received: list[tuple[str, str, object]] = []

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _reply(self, code: int, body: object) -> None:
        raw = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self):
        self.received.append(("GET", self.path, None))
        self._reply(200, {"weights": {"canary": 0.25, "shadow": 0.0},
                          "versions": {"stable": {"version": "1"}, "canary": {"version": "2"}}})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"null")
        self.received.append(("POST", self.path, body))
        if self.path == "/-/promote" and self.headers.get("X-Fail"):
            self._reply(500, {"error": "boom"})
        elif self.path.startswith("/-/"):
            self._reply(200, {"ok": True})
        else:
            self._reply(404, {"error": f"no route {self.path}"})


@pytest.fixture
def ingress():
    _Ingress.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ingress)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Ingress.received
    server.shutdown()
    server.server_close()


def test_http_traffic_control_posts_the_expected_json(ingress):
    url, received = ingress
    control = HttpTrafficControl(url + "/", timeout_s=5)
    assert control.status()["weights"]["canary"] == 0.25
    control.set_weights(0.5, 0.1)
    control.promote()
    control.rollback()
    assert received == [("GET", "/-/status", None),
                        ("POST", "/-/traffic", {"canary_weight": 0.5, "shadow_weight": 0.1}),
                        ("POST", "/-/promote", {}), ("POST", "/-/rollback", {})]
    with pytest.raises(ValueError, match="canary_weight must be within"):
        control.set_weights(1.5)


def test_http_traffic_control_errors_say_what_happened(ingress):
    url, _ = ingress
    with pytest.raises(TrafficError, match="HTTP 404.*no route"):
        HttpTrafficControl(url + "/nope")._call("POST", "/x", {})
    with pytest.raises(TrafficError, match="is the serving ingress running"):
        HttpTrafficControl("http://127.0.0.1:9", timeout_s=2).status()


def test_cli_help_and_status_around_a_rollout(tmp_path, capsys):
    """The CLI's help and status; the rollout in between runs in-process against a fake ingress."""
    from test_rollout_controller import FakeClock, FakeRegistry, FakeServing

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"    {action} " in out for action in ("start", "status", "abort", "promote"))
    assert main(["nope"]) == 2
    assert main(["start", "--help"]) == 0 and "--min_requests" in capsys.readouterr().out
    assert main(["abort", "--help"]) == 0 and "--reason" in capsys.readouterr().out
    common = ["--model", "fraud", "--state_dir", str(tmp_path)]
    assert main(["status", *common]) == 1
    serving = FakeServing()
    cfg = parse_config(RolloutConfig, expand_spellings([*common, "--steps", "50,100"]))
    decisions = []
    state = RolloutController(cfg, serving, registry=FakeRegistry(), clock=FakeClock(serving),
                              on_decision=decisions.append).run()
    assert state.state == "promoted"
    summaries = " ".join(d.summary() for d in decisions)
    assert "ADVANCE" in summaries and "PROMOTE" in summaries
    assert main(["status", *common]) == 0
    assert "state      promoted" in capsys.readouterr().out
    aborted = parse_config(ManualAction, [*common, "--reason", "test"])
    with pytest.raises(RolloutError, match="already promoted"):
        RolloutController(aborted, FakeServing(), registry=FakeRegistry()).abort(aborted.reason, aborted.who)
    serving = FakeServing()
    other = parse_config(ManualAction, ["--model", "fraud", "--state_dir", str(tmp_path / "other"), "--reason", "t"])
    RolloutController(other, serving, registry=FakeRegistry()).abort(other.reason, other.who)
    assert serving.calls == [("rollback",)]
    with pytest.raises(ConfigError, match="reason is required"):
        main(["abort", "--model", "fraud", "--state_dir", str(tmp_path)])


def test_the_documented_spellings_interval_with_unit_and_min_requests():
    from modelyard.rollout.config import parse_duration

    cfg = parse_config(RolloutConfig, expand_spellings(["--model", "fraud", "--candidate", "@challenger", "--steps",
                                                        "5,25,50,100", "--interval", "30s", "--min-requests", "50"]))
    assert cfg.interval_s == 30.0 and cfg.min_requests == 50
    assert cfg.steps == [0.05, 0.25, 0.5, 1.0]
    assert parse_duration("2m") == 120.0 and parse_duration("500ms") == 0.5 and parse_duration("7") == 7.0
    with pytest.raises(Exception, match="not a duration"):
        expand_spellings(["--model", "fraud", "--candidate", "2", "--interval", "soon"])


def test_traffic_control_is_the_control_routes_unless_serve_app_names_the_application():
    from modelyard.rollout.run import traffic_control

    control = traffic_control(RolloutConfig(model="fraud", serve_url="http://127.0.0.1:8001", http_timeout_s=3))
    assert isinstance(control, HttpTrafficControl) and control.base_url == "http://127.0.0.1:8001"
    assert control.timeout_s == 3
    # With serve_app it connects to Ray: refused in this tier, which shows it tried to.
    with pytest.raises(RuntimeError, match="must not start Ray"):
        traffic_control(RolloutConfig(model="fraud", serve_app="modelyard"))
