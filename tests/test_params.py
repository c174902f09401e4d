"""engine.params: the tables and MigrationConfig's QEMU checks, without the monitor."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from engine.errors import MigrationError
from engine.params import (
    CAPABILITIES,
    CAPS_BY_NAME,
    CHECK_ORDER,
    PARAMETERS,
    PARAMS_BY_NAME,
    Kind,
    MigrationConfig,
)

QEMU_CAPS = (
    "xbzrle rdma-pin-all auto-converge zero-blocks compress events postcopy-ram x-colo "
    "release-ram block return-path pause-before-switchover multifd dirty-bitmaps "
    "postcopy-blocktime late-block-activate x-ignore-shared validate-uuid background-snapshot "
    "zero-copy-send postcopy-preempt"
).split()
ALL_CAPS = [c.name for c in CAPABILITIES]  # QEMU's, then qemu-hmp's extensions


def test_tables_are_well_formed() -> None:
    assert [c.name for c in CAPABILITIES if not c.extension] == QEMU_CAPS
    assert all(c.name.startswith("x-") for c in CAPABILITIES if c.extension)
    assert {c.name for c in CAPABILITIES if c.supported} == {
        "compress",
        "events",
        "pause-before-switchover",
        "validate-uuid",
        "background-snapshot",
        "zero-copy-send",
        "auto-converge",
        "multifd",
        "postcopy-blocktime",
        "postcopy-preempt",
        "postcopy-ram",
        "release-ram",
        "return-path",
        "x-compress-auto",
        "xbzrle",
    }
    assert len(PARAMS_BY_NAME) == len(PARAMETERS)
    assert len(CAPS_BY_NAME) == len(CAPABILITIES)
    for spec in PARAMETERS:
        if spec.extension:
            assert spec.name.startswith("x-") and not spec.printed, spec.name
        assert (spec.kind is Kind.ENUM) == bool(spec.choices)
        assert spec.doc
    assert set(CHECK_ORDER) == {p.name for p in PARAMETERS if p.check}
    assert PARAMS_BY_NAME["x-compress-method"].default == "zlib"


def test_defaults() -> None:
    config = MigrationConfig()
    assert config.param("compress-level") == 1
    assert config.param("compress-threads") == 8
    assert config.param("decompress-threads") == 2
    assert config.param("max-bandwidth") == 128 * 1024 * 1024
    assert config.param("compress-wait-thread") is True
    assert not any(config.capabilities().values())
    assert list(config.params()) == [p.name for p in PARAMETERS]
    assert list(config.capabilities()) == ALL_CAPS


BETWEEN = "a value between {} and {}"
IN_RANGE = "an integer in the range of {} to {}"
RANGES = [
    ("compress-level", 0, 9, BETWEEN.format(0, 9)),
    ("compress-threads", 1, 255, BETWEEN.format(1, 255)),
    ("decompress-threads", 1, 255, BETWEEN.format(1, 255)),
    ("throttle-trigger-threshold", 1, 100, IN_RANGE.format(1, 100)),
    ("cpu-throttle-initial", 1, 99, IN_RANGE.format(1, 99)),
    ("cpu-throttle-increment", 1, 99, IN_RANGE.format(1, 99)),
    ("multifd-channels", 1, 255, BETWEEN.format(1, 255)),
    ("downtime-limit", 0, 2000000, IN_RANGE.format(0, "(2000 * 1000) ms")),
    ("announce-initial", 0, 100000, BETWEEN.format(0, 100000)),
    ("announce-max", 0, 100000, BETWEEN.format(0, 100000)),
    ("announce-rounds", 0, 1000, BETWEEN.format(0, 1000)),
    ("announce-step", 1, 10000, BETWEEN.format(0, 10000)),  # sic
    ("max-cpu-throttle", 20, 99, IN_RANGE.format("cpu_throttle_initial", 99)),
]  # fmt: skip


@pytest.mark.parametrize(("name", "low", "high", "expects"), RANGES)
def test_range_ends(name: str, low: int, high: int, expects: str) -> None:
    message = f"Parameter '{name.replace('-', '_')}' expects {expects}"
    config = MigrationConfig()
    for good in (low, high):
        config.set_parameters({name: good})
        assert config.param(name) == good
    for bad in (low - 1, high + 1):
        if bad < 0 or (bad > 255 and PARAMS_BY_NAME[name].kind is Kind.UINT8):
            continue
        with pytest.raises(MigrationError) as err:
            config.set_parameters({name: bad})
        assert err.value.desc == message
        assert config.param(name) == high  # unchanged


def test_whole_set_is_checked_all_or_nothing() -> None:
    config = MigrationConfig()
    config.set_parameters({"max-cpu-throttle": 50})
    with pytest.raises(MigrationError, match="max_cpu_throttle"):
        config.set_parameters({"cpu-throttle-initial": 60})
    with pytest.raises(MigrationError, match="compress_level"):
        config.set_parameters({"compress-threads": 4, "compress-level": 10})
    assert config.param("compress-threads") == 8
    config.set_parameters({"cpu-throttle-initial": 50, "max-cpu-throttle": 60})
    assert config.param("cpu-throttle-initial") == 50


def test_xbzrle_cache_size_power_of_two() -> None:
    config = MigrationConfig()
    config.set_parameters({"xbzrle-cache-size": 4096})
    for bad in (0, 2048, 5000):
        with pytest.raises(MigrationError, match="power of two no less than the target page"):
            config.set_parameters({"xbzrle-cache-size": bad})


NOT_LZ4 = "does not accept value 'lz4'"


def test_wrong_types_and_names() -> None:
    config = MigrationConfig()
    cases = [
        ({"compress-level": 256}, "Parameter 'compress-level' expects uint8_t"),
        ({"x-checkpoint-delay": 2**32}, "Parameter 'x-checkpoint-delay' expects uint32_t"),
        ({"compress-level": True}, "Parameter 'compress-level' expects uint8_t"),
        ({"compress-wait-thread": 1}, "Parameter 'compress-wait-thread' expects 'on' or 'off'"),
        ({"multifd-compression": "lz4"}, f"Parameter 'multifd-compression' {NOT_LZ4}"),
        ({"x-compress-method": "lzo"}, "Parameter 'x-compress-method' does not accept value 'lzo'"),
        ({"tls-creds": 5}, "Parameter 'tls-creds' expects string"),
        ({"block-bitmap-mapping": ""}, "The block-bitmap-mapping parameter can only be set through"
                                       " QMP"),
        ({"compress_level": 1}, "invalid parameter value: compress_level"),
    ]  # fmt: skip
    for values, message in cases:
        with pytest.raises(MigrationError) as err:
            config.set_parameters(values)
        assert err.value.desc == message
    with pytest.raises(MigrationError, match="invalid parameter value: nope"):
        config.set_capabilities({"nope": True}, incoming=False)
    config.set_parameters({"x-compress-method": "zstd"})
    assert config.param("x-compress-method") == "zstd"


@pytest.mark.parametrize("first", ["compress", "multifd"])
def test_compress_and_multifd_exclude_each_other(first: str) -> None:
    config = MigrationConfig()
    config.set_capabilities({first: True}, incoming=False)
    second = "multifd" if first == "compress" else "compress"
    with pytest.raises(MigrationError) as err:
        config.set_capabilities({second: True}, incoming=False)
    assert err.value.desc == "Multifd is not compatible with compress"
    assert config.capabilities() == {**dict.fromkeys(ALL_CAPS, False), first: True}
    with pytest.raises(MigrationError):
        config.set_capabilities({"compress": True, "multifd": True}, incoming=True)


def test_capability_checks_in_qemu_order() -> None:
    config = MigrationConfig()
    with pytest.raises(MigrationError, match=r"^Postcopy preempt requires postcopy-ram$"):
        config.set_capabilities({"postcopy-preempt": True, "compress": True}, incoming=False)
    config.set_capabilities({"background-snapshot": True}, incoming=False)
    with pytest.raises(
        MigrationError, match=r"^Background-snapshot is not compatible with compress$"
    ):
        config.set_capabilities({"compress": True, "xbzrle": True}, incoming=False)


def test_zero_copy_ties_capabilities_and_parameters() -> None:
    config = MigrationConfig()
    message = "Zero copy only available for non-compressed non-TLS multifd migration"
    with pytest.raises(MigrationError, match=message):
        config.set_capabilities({"zero-copy-send": True}, incoming=False)
    config.set_capabilities({"multifd": True, "zero-copy-send": True}, incoming=False)
    for values in ({"multifd-compression": "zlib"}, {"tls-creds": "tls0"}):
        with pytest.raises(MigrationError, match=message):
            config.set_parameters(values)


def test_concurrent_updates_keep_the_set_valid() -> None:
    config = MigrationConfig()

    def writer(level: int) -> None:
        for _ in range(200):
            config.set_parameters({"compress-level": level, "compress-threads": level + 1})

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    params = config.params()
    assert params["compress-threads"] == params["compress-level"] + 1


def test_readme_lists_every_parameter_and_capability() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    reference = readme.split("## Command reference")[1]
    for name in [p.name for p in PARAMETERS] + [c.name for c in CAPABILITIES]:
        assert f"| `{name}` |" in reference, name


def test_capabilities_that_stay_refused_say_why() -> None:
    """The README's table gives each a reason; no implemented one has one."""
    lasting = (
        "block zero-blocks dirty-bitmaps late-block-activate rdma-pin-all x-colo x-ignore-shared"
    )
    for name in lasting.split():
        assert CAPS_BY_NAME[name].refused_because and not CAPS_BY_NAME[name].supported, name
    assert not any(c.refused_because for c in CAPABILITIES if c.supported)
