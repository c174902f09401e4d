"""QEMU 11.1's migration capabilities and parameters, beside 7.2's (engine/params.py).

What 11.1 shares with 7.2 is taken from 7.2's table; what changed is stated here: 11.1 has no
compress or block migration, adds switchover-ack, dirty-limit and mapped-ram and nine
parameters, prints in another order, and words its range errors ``Option NAME expects ...``.
Texts are QEMU 11.1.3's (recorded in tests/data/qemu-11.1/).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from engine.errors import MigrationError
from engine.numbers import UINT64_MAX
from engine.params import (
    BACKGROUND_SNAPSHOT_INCOMPATIBLE,
    CAPS_BY_NAME,
    PARAMS_BY_NAME,
    ZERO_COPY,
    CapabilitySpec,
    ConfigTable,
    Kind,
    ParamSpec,
    ParamValue,
    Range,
    check_background_snapshot,
    check_ranges,
)

MiB = 1024 * 1024


def _p(name: str, **changes: object) -> ParamSpec:
    """7.2's parameter ``name``, with what 11.1 changed."""
    return replace(PARAMS_BY_NAME[name], **changes)  # type: ignore[arg-type]


def _between(low: int, high: int) -> Range:
    return Range(low, high, f"a value between {low} and {high}")


# `info migrate_parameters` order; the unprinted ones where QAPI declares them.
PARAMETERS: tuple[ParamSpec, ...] = (
    _p("announce-initial"),
    _p("announce-max"),
    _p("announce-rounds"),
    _p("announce-step"),
    _p("throttle-trigger-threshold"),
    _p("cpu-throttle-initial"),
    _p("cpu-throttle-increment"),
    _p("cpu-throttle-tailslow"),
    _p(
        "max-cpu-throttle",
        check=Range(
            "cpu-throttle-initial", 99, "an integer in the range of cpu-throttle-initial to 99"
        ),
    ),
    _p("tls-creds"),
    _p("tls-hostname"),
    _p("tls-authz"),
    _p("max-bandwidth"),
    ParamSpec(
        "avail-switchover-bandwidth",
        Kind.SIZE,
        0,
        "bandwidth the switchover may use, bytes/s, for expected downtime (0: the measured one)",
        "bytes/second",
        Range(
            0, UINT64_MAX, "an integer in the range of 0 to (18446744073709551615UL) bytes/second"
        ),
    ),
    _p("max-postcopy-bandwidth", unit="bytes/second"),
    _p("downtime-limit"),
    _p("x-checkpoint-delay"),
    _p("multifd-channels"),
    _p("multifd-compression"),
    _p("multifd-zlib-level", check=_between(0, 9)),
    ParamSpec(
        "multifd-qatzip-level",
        Kind.UINT8,
        1,
        "QATzip level of multifd (1-9; no QAT device here)",
        check=_between(1, 9),
        printed=False,
    ),
    _p("multifd-zstd-level", check=_between(0, 20)),
    ParamSpec(
        "zero-page-detection",
        Kind.ENUM,
        "multifd",
        "where zero pages are found: none, the main thread (legacy) or the multifd channels",
        choices=("none", "legacy", "multifd"),
    ),
    _p("xbzrle-cache-size"),
    _p("block-bitmap-mapping"),
    ParamSpec(
        "x-vcpu-dirty-limit-period",
        Kind.SIZE,
        1000,
        "period of the dirty-limit capability's rate calculation",
        "ms",
        _between(1, 1000),
    ),
    ParamSpec(
        "vcpu-dirty-limit",
        Kind.SIZE,
        1,
        "dirty page rate limit of each vCPU under dirty-limit",
        "MB/s",
        Range(
            1, UINT64_MAX, "", message="Parameter 'vcpu-dirty-limit' must be greater than 1 MB/s"
        ),
    ),
    ParamSpec(
        "mode",
        Kind.ENUM,
        "normal",
        "migration mode (cpr-*: CheckPoint and Restart, not modelled)",
        choices=("normal", "cpr-reboot", "cpr-transfer", "cpr-exec"),
    ),
    ParamSpec("direct-io", Kind.BOOL, False, "open a mapped-ram file with O_DIRECT"),
    ParamSpec(
        "x-rdma-chunk-size",
        Kind.SIZE,
        MiB,
        "RDMA registration chunk (RDMA is not modelled)",
        "bytes",
        Range(
            MiB,
            1024 * MiB,
            "",
            power_of_two=True,
            message="Option x_rdma_chunk_size expects a power of 2 in the range 1MiB to 1024MiB",
        ),
    ),
    ParamSpec("cpr-exec-command", Kind.WORDS, "", "the command a cpr-exec migration runs"),
    _p("x-link-bandwidth"),
)
PARAMS_BY_NAME_11 = {p.name: p for p in PARAMETERS}

CHECK_ORDER: tuple[str, ...] = (
    "throttle-trigger-threshold",
    "cpu-throttle-initial",
    "cpu-throttle-increment",
    "max-bandwidth",
    "avail-switchover-bandwidth",
    "downtime-limit",
    "multifd-channels",
    "multifd-zlib-level",
    "multifd-qatzip-level",
    "multifd-zstd-level",
    "xbzrle-cache-size",
    "max-cpu-throttle",
    "announce-initial",
    "announce-max",
    "announce-rounds",
    "announce-step",
    "x-vcpu-dirty-limit-period",
    "vcpu-dirty-limit",
    "x-rdma-chunk-size",
)


def _c(name: str) -> CapabilitySpec:
    return CAPS_BY_NAME[name]


CAPABILITIES: tuple[CapabilitySpec, ...] = (
    *(
        _c(name)
        for name in (
            "xbzrle rdma-pin-all auto-converge events postcopy-ram x-colo release-ram "
            "return-path pause-before-switchover multifd dirty-bitmaps postcopy-blocktime "
            "late-block-activate x-ignore-shared validate-uuid background-snapshot "
            "zero-copy-send postcopy-preempt"
        ).split()
    ),
    CapabilitySpec(
        "switchover-ack",
        "the source switches over only once the destination acknowledged it is ready",
        supported=True,
    ),
    CapabilitySpec("dirty-limit", "limit each vCPU's dirty page rate (needs a KVM dirty ring)"),
    CapabilitySpec(
        "mapped-ram", "each page at a fixed offset of a seekable file (file: URIs)", supported=True
    ),
)

# check_caps_background_snapshot's list in 11.1: 7.2's without compress (removed in 9.1).
_BACKGROUND_SNAPSHOT_INCOMPATIBLE = tuple(
    name for name in BACKGROUND_SNAPSHOT_INCOMPATIBLE if name != "compress"
)


def _tls(params: Mapping[str, ParamValue]) -> bool:
    return bool(params["tls-creds"])


def _check_params(params: Mapping[str, ParamValue], caps: Mapping[str, bool]) -> None:
    """QEMU 11.1's migrate_params_check."""
    check_ranges(
        params,
        PARAMS_BY_NAME_11,
        CHECK_ORDER,
        lambda name, expects: f"Option {name} expects {expects}",
    )
    compressed = params["multifd-compression"] != "none"
    if caps["zero-copy-send"] and (compressed or _tls(params)):
        raise MigrationError(ZERO_COPY)
    if caps["mapped-ram"] and (compressed or _tls(params)):
        raise MigrationError(
            "Mapped-ram only available for non-compressed non-TLS multifd migration"
        )


def _check_caps(
    caps: Mapping[str, bool], params: Mapping[str, ParamValue], old: Mapping[str, bool]
) -> None:
    """QEMU 11.1's migrate_caps_check (what can fail on this host, TCG only), in its order."""
    if caps["x-colo"] and not caps["return-path"]:
        raise MigrationError("Capability 'x-colo' requires capability 'return-path'")
    if caps["postcopy-ram"] and caps["x-ignore-shared"]:
        raise MigrationError("Postcopy is not compatible with ignore-shared")
    check_background_snapshot(caps, _BACKGROUND_SNAPSHOT_INCOMPATIBLE)
    if caps["zero-copy-send"] and (
        not caps["multifd"]
        or caps["xbzrle"]
        or params["multifd-compression"] != "none"
        or _tls(params)
    ):
        raise MigrationError(ZERO_COPY)
    if caps["switchover-ack"] and not caps["return-path"]:
        raise MigrationError("Capability 'switchover-ack' requires capability 'return-path'")
    if caps["dirty-limit"]:
        if caps["auto-converge"]:
            raise MigrationError(
                "dirty-limit conflicts with auto-converge either of then available currently"
            )
        # There is no KVM here, so no dirty ring.
        raise MigrationError(
            "dirty-limit requires KVM with accelerator property 'dirty-ring-size' set"
        )
    if caps["multifd"] and caps["xbzrle"]:
        raise MigrationError("Multifd is not compatible with xbzrle")
    if caps["mapped-ram"]:
        if caps["xbzrle"]:
            raise MigrationError("Mapped-ram migration is incompatible with xbzrle")
        if caps["postcopy-ram"]:
            raise MigrationError("Mapped-ram migration is incompatible with postcopy")
    if caps["postcopy-preempt"] and not caps["postcopy-ram"]:
        raise MigrationError("Postcopy preempt requires postcopy-ram")


def _incoming_started(new: Mapping[str, bool], old: Mapping[str, bool]) -> str | None:
    """11.1 sets up multifd's channels when the destination starts listening."""
    if new["multifd"] and not old["multifd"]:
        return "Multifd must be set before incoming starts"
    return None


TABLE_11_1 = ConfigTable(
    "11.1",
    PARAMETERS,
    CAPABILITIES,
    _check_params,
    _check_caps,
    # What the engine reads of 7.2's settings: 11.1 has no compress capability (removed in 9.1).
    implicit={
        "compress": False,
        "x-compress-auto": False,
        "compress-level": 1,
        "compress-threads": 8,
        "compress-wait-thread": True,
        "decompress-threads": 2,
        "x-compress-method": "zlib",
        "block": False,
        "block-incremental": False,
    },
    report_failures=False,
    incoming_setup_event=False,
    listening_is_setup=True,
    failing_state=True,
    report_stream_failures=True,
    ram_section_id=1,
    ram_setup_failed="ram_save_setup failed: Input/output error",
    file_uris=True,
    announce_every_sync=False,
    device_at_switchover=True,
    incoming_started=_incoming_started,
)
