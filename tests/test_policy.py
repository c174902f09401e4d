"""The adaptive compression policy's decisions from given measurements."""

from __future__ import annotations

from engine.policy import PROBE_EVERY, AdaptivePolicy

MB = 1_000_000


def measured(policy: AdaptivePolicy, *, speed: float, ratio: float, cap: float) -> None:
    """One period in which the workers compressed at ``speed`` with ``ratio``."""
    policy.compressed(int(speed), int(speed / ratio), busy_s=1.0 * policy_workers(policy))
    policy.update(cap, "max-bandwidth" if cap else "")


def policy_workers(policy: AdaptivePolicy) -> int:
    return policy._workers


def test_slow_link_keeps_compression_and_raises_the_level():
    policy = AdaptivePolicy(level=1, max_level=9, workers=2)
    measured(policy, speed=300 * MB, ratio=2.0, cap=32 * MB)
    info = policy.info()
    assert info.compress and info.level == 2
    assert info.raw_estimate == 32 * MB and info.compressed_estimate == 64 * MB
    assert info.link_source == "max-bandwidth"


def test_fast_link_turns_compression_off_then_probes():
    policy = AdaptivePolicy(level=1, max_level=9, workers=2)
    measured(policy, speed=250 * MB, ratio=1.9, cap=1000 * MB)
    assert not policy.info().compress
    decisions = [policy.use_compression()[0] for _ in range(PROBE_EVERY * 2)]
    assert decisions.count(True) == 2  # one probe chunk in every PROBE_EVERY keeps measuring


def test_busy_compressors_lower_the_level_and_a_slower_link_switches_back():
    policy = AdaptivePolicy(level=6, max_level=9, workers=2)
    measured(policy, speed=80 * MB, ratio=2.4, cap=60 * MB)  # 80 < 60 * 2.4: CPU-bound
    assert policy.info().compress and policy.info().level == 5
    measured(policy, speed=80 * MB, ratio=2.4, cap=200 * MB)  # raw 200 beats 80
    assert not policy.info().compress
    measured(policy, speed=80 * MB, ratio=2.4, cap=30 * MB)  # 72 beats 30
    info = policy.info()
    assert info.compress and info.switches == 3


def test_measured_socket_speed_when_nothing_caps_the_stream():
    policy = AdaptivePolicy(level=1, max_level=9, workers=1)
    policy.sent(500 * MB, 0.5)
    measured(policy, speed=250 * MB, ratio=2.0, cap=0)
    info = policy.info()
    assert info.link_source == "measured socket" and info.link_bps == 1000 * MB
    assert not info.compress


def test_stop_and_copy_goes_back_to_the_configured_level_for_the_lifted_cap():
    policy = AdaptivePolicy(level=1, max_level=9, workers=2)
    for _ in range(4):  # a 32 MB/s cap leaves the workers idle: the level climbs
        measured(policy, speed=300 * MB, ratio=2.0, cap=32 * MB)
    assert policy.info().level == 5
    policy.stop_and_copy(125 * MB, "x-link-bandwidth")  # max-bandwidth lifted, 1 GbE left
    info = policy.info()
    assert info.compress and info.level == 1
    assert info.link_bps == 125 * MB and info.link_source == "x-link-bandwidth"
    assert info.switches == 5
