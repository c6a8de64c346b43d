"""The canary/shadow router of `serve ray`: weights, sticky hashing, shadow sampling (no Ray)."""

from __future__ import annotations

import pytest

from modelyard.serve.ray.router import TrafficRouter, key_point, validate_weights


def test_keyless_share_is_exact_over_full_blocks():
    router = TrafficRouter(canary_weight=0.25, has_canary=True, seed=1)
    targets = [router.choose().target for _ in range(2000)]
    assert targets.count("canary") == 500
    assert targets[:100] != targets[100:200]  # shuffled, not a fixed pattern


def test_fractional_weights_average_out_and_extremes_are_absolute():
    router = TrafficRouter(canary_weight=0.255, has_canary=True, seed=2)
    assert abs([router.choose().target for _ in range(10_000)].count("canary") - 2550) <= 1
    for weight, expected in ((0.0, {"stable"}), (1.0, {"canary"})):
        router.set_weights(canary_weight=weight)
        assert {router.choose().target for _ in range(300)} == expected


def test_sticky_keys_are_deterministic_and_only_move_towards_canary():
    assert key_point("customer-7") == key_point("customer-7")
    assert 0.0 <= key_point("x") < 1.0
    router = TrafficRouter(canary_weight=0.25, has_canary=True)
    keys = [f"k{i}" for i in range(1000)]
    first = [router.choose(k).target for k in keys]
    assert first == [router.choose(k).target for k in keys]
    assert 150 < first.count("canary") < 350
    router.set_weights(canary_weight=0.5)
    later = [router.choose(k).target for k in keys]
    assert all(b == "canary" for a, b in zip(first, later) if a == "canary")


def test_shadow_sampling_only_on_stable_answers():
    router = TrafficRouter(canary_weight=0.0, shadow_weight=0.3, has_canary=True, seed=0)
    routes = [router.choose() for _ in range(5000)]
    assert all(r.target == "stable" for r in routes)
    assert 0.27 < sum(r.shadow for r in routes) / 5000 < 0.33
    router.set_weights(shadow_weight=0.0)
    assert not any(router.choose().shadow for _ in range(500))


def test_no_canary_means_stable_and_refuses_weights():
    router = TrafficRouter()
    assert router.choose("k").target == "stable"
    with pytest.raises(ValueError, match="no canary"):
        router.set_weights(canary_weight=0.2)


def test_promote_and_rollback():
    router = TrafficRouter(canary_weight=0.5, shadow_weight=0.5, has_canary=True)
    router.rollback()
    assert (router.canary_weight, router.shadow_weight, router.has_canary) == (0.0, 0.0, True)
    router.promote()
    assert not router.has_canary and router.choose().target == "stable"


@pytest.mark.parametrize(("payload", "words"), [
    ({"canary_weight": 1.5}, ["canary_weight", "1.5", "[0, 1]"]),
    ({"shadow_weight": "a"}, ["shadow_weight", "'a'"]),
    ({"canary_weight": True}, ["canary_weight", "True"]),
    ({"weight": 0.1}, ["unknown", "weight"]),
    ({}, ["no weights"]),
    ([0.2], ["JSON object", "list"]),
])
def test_validate_weights_names_the_problem(payload, words):
    with pytest.raises(ValueError) as err:
        validate_weights(payload)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_validate_weights_accepts_ints_and_floats():
    assert validate_weights({"canary_weight": 1, "shadow_weight": 0.5}) == {"canary_weight": 1.0, "shadow_weight": 0.5}


def test_traffic_config_parses_the_user_config_and_names_every_problem():
    from modelyard.serve.ray.router import TrafficConfig

    config = TrafficConfig.parse({"canary_weight": 1, "shadow_weight": 0.5, "promoted": False, "revision": "r1"})
    assert config == TrafficConfig(1.0, 0.5, "x-routing-key", False, "r1")
    assert type(config.canary_weight) is float
    assert TrafficConfig.parse(config.to_dict()) == config and TrafficConfig.parse({}) == TrafficConfig()
    with pytest.raises(ValueError) as err:
        TrafficConfig.parse({"canary_weight": 2, "sticky_header": " ", "promoted": "yes", "canary": 0.1})
    text = str(err.value)
    assert "unknown key 'canary'" in text and "canary_weight must be a number within [0, 1], got 2" in text
    assert "sticky_header must be a non-empty header name" in text and "promoted must be a bool, got 'yes'" in text
    with pytest.raises(ValueError, match="must be a mapping"):
        TrafficConfig.parse([0.5])
