"""Every migration capability and parameter of QEMU 7.2, in one table each, and their checks.

Validation, defaults, the `info migrate_*` renderers, completion and the README all read these
tables. ``ConfigTable`` bundles one release's tables and checks (``TABLE_7_2`` here; QEMU
11.1's in engine/params11.py); a ``MigrationConfig`` holds the settings of one table. Error
texts are QEMU's, byte for byte (``migrate_params_check`` / ``migrate_caps_check``).
Parsing the monitor's strings into typed values is the monitor's job (``hmp/monitor/values.py``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property

from engine.compression import CODECS
from engine.errors import MigrationError
from engine.guest import PAGE_SIZE
from engine.multifd import METHODS
from engine.numbers import UINT8_MAX, UINT32_MAX, UINT64_MAX

ParamValue = int | bool | str


class Kind(StrEnum):
    UINT8 = "uint8"
    UINT32 = "uint32"
    SIZE = "size"  # uint64; the monitor accepts k/M/G/... suffixes
    BOOL = "bool"
    STR = "str"
    ENUM = "enum"
    QMP_ONLY = "qmp-only"  # block-bitmap-mapping: a list the monitor cannot express
    WORDS = "words"  # a list of strings (cpr-exec-command), held as ``words_value`` makes it


@dataclass(frozen=True)
class Range:
    """A ``migrate_params_check`` rule: ``low <= value <= high`` else ``Parameter 'x' expects ...``.

    ``low`` may name another parameter (max-cpu-throttle's floor is cpu-throttle-initial).
    """

    low: int | str
    high: int
    expects: str  # QEMU's text after "expects "
    power_of_two: bool = False
    message: str = ""  # a release's whole error text where it does not follow its pattern


@dataclass(frozen=True)
class ParamSpec:
    name: str
    kind: Kind
    default: ParamValue
    doc: str
    unit: str = ""  # printed after the value by `info migrate_parameters`
    check: Range | None = None
    choices: tuple[str, ...] = ()
    printed: bool = True  # shown by QEMU 7.2's `info migrate_parameters`
    extension: bool = False  # ours, not QEMU's (an ``x-`` name)


@dataclass(frozen=True)
class CapabilitySpec:
    name: str
    doc: str
    supported: bool = False  # the qemu-hmp engine implements it; others store but refuse to migrate
    extension: bool = False
    refused_because: str = ""  # why qemu-hmp will not implement it (the README's table)


def _between(low: int, high: int) -> Range:
    return Range(low, high, f"a value between {low} and {high}")


def _in_range(low: int, high: int) -> Range:
    return Range(low, high, f"an integer in the range of {low} to {high}")


# `info migrate_parameters` order; parameters it does not print sit where QAPI declares them.
PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec(
        "announce-initial",
        Kind.SIZE,
        50,
        "initial delay before the first self-announcement",
        "ms",
        _between(0, 100000),
    ),
    ParamSpec(
        "announce-max",
        Kind.SIZE,
        550,
        "maximum delay between self-announcements",
        "ms",
        _between(0, 100000),
    ),
    ParamSpec(
        "announce-rounds",
        Kind.SIZE,
        5,
        "number of self-announcement packets",
        check=_between(0, 1000),
    ),
    # QEMU says "between 0" but rejects 0.
    ParamSpec(
        "announce-step",
        Kind.SIZE,
        100,
        "delay increase between self-announcements",
        "ms",
        Range(1, 10000, "a value between 0 and 10000"),
    ),
    ParamSpec(
        "compress-level",
        Kind.UINT8,
        1,
        "zlib level of the compress capability (0 none, 1 fastest, 9 best)",
        check=_between(0, 9),
    ),
    ParamSpec(
        "compress-threads",
        Kind.UINT8,
        8,
        "compression threads on the source",
        check=_between(1, 255),
    ),
    ParamSpec(
        "compress-wait-thread",
        Kind.BOOL,
        True,
        "wait for a free compression thread (off: send the page uncompressed)",
    ),
    ParamSpec(
        "decompress-threads",
        Kind.UINT8,
        2,
        "decompression threads on the destination",
        check=_between(1, 255),
    ),
    ParamSpec(
        "throttle-trigger-threshold",
        Kind.UINT8,
        50,
        "dirty/transferred ratio (%) that triggers auto-converge",
        check=_in_range(1, 100),
    ),
    ParamSpec(
        "cpu-throttle-initial",
        Kind.UINT8,
        20,
        "initial vCPU throttle (%) of auto-converge",
        check=_in_range(1, 99),
    ),
    ParamSpec(
        "cpu-throttle-increment",
        Kind.UINT8,
        10,
        "vCPU throttle step (%) of auto-converge",
        check=_in_range(1, 99),
    ),
    ParamSpec("cpu-throttle-tailslow", Kind.BOOL, False, "make the last throttle steps smaller"),
    ParamSpec(
        "max-cpu-throttle",
        Kind.UINT8,
        99,
        "maximum vCPU throttle (%) of auto-converge",
        check=Range(
            "cpu-throttle-initial", 99, "an integer in the range of cpu_throttle_initial to 99"
        ),
    ),
    ParamSpec("tls-creds", Kind.STR, "", "id of the TLS credentials object"),
    ParamSpec("tls-hostname", Kind.STR, "", "hostname to check the TLS certificate against"),
    ParamSpec(
        "max-bandwidth",
        Kind.SIZE,
        128 * 1024 * 1024,
        "bandwidth cap in bytes/s (monitor default unit MiB; 0 unlimited)",
        "bytes/second",
        Range(
            0, UINT64_MAX, "an integer in the range of 0 to (18446744073709551615UL) bytes/second"
        ),
    ),
    ParamSpec(
        "downtime-limit",
        Kind.SIZE,
        300,
        "longest acceptable stop-and-copy pause",
        "ms",
        Range(0, 2000 * 1000, "an integer in the range of 0 to (2000 * 1000) ms"),
    ),
    ParamSpec("x-checkpoint-delay", Kind.UINT32, 20000, "COLO checkpoint interval", "ms"),
    ParamSpec("block-incremental", Kind.BOOL, False, "incremental block migration (-i)"),
    ParamSpec(
        "multifd-channels",
        Kind.UINT8,
        2,
        "parallel channels of the multifd capability",
        check=_between(1, 255),
    ),
    ParamSpec(
        "multifd-compression",
        Kind.ENUM,
        "none",
        "page compression of multifd",
        choices=tuple(METHODS),
    ),
    # QEMU 7.2's monitor never range-checks these two (its overlay skips them), nor prints them.
    ParamSpec("multifd-zlib-level", Kind.UINT8, 1, "zlib level of multifd (0-9)", printed=False),
    ParamSpec("multifd-zstd-level", Kind.UINT8, 1, "zstd level of multifd (0-20)", printed=False),
    ParamSpec(
        "xbzrle-cache-size",
        Kind.SIZE,
        64 * 1024 * 1024,
        "XBZRLE page cache size",
        "bytes",
        Range(
            PAGE_SIZE,
            UINT64_MAX,
            "a power of two no less than the target page size",
            power_of_two=True,
        ),
    ),
    ParamSpec("max-postcopy-bandwidth", Kind.SIZE, 0, "bandwidth cap in postcopy (0 unlimited)"),
    ParamSpec("tls-authz", Kind.STR, "", "id of the TLS authorization object"),
    ParamSpec(
        "block-bitmap-mapping", Kind.QMP_ONLY, "", "dirty-bitmap node/alias mapping", printed=False
    ),
    ParamSpec(
        "x-compress-method",
        Kind.ENUM,
        "zlib",
        "codec used by the compress capability",
        choices=tuple(CODECS),
        printed=False,
        extension=True,
    ),
    ParamSpec(
        "x-link-bandwidth",
        Kind.SIZE,
        0,
        "emulated network link for experiments, bytes/second; never lifted (0: none)",
        printed=False,
        extension=True,
    ),
)

# The order in which QEMU's migrate_params_check reports the first failure.
CHECK_ORDER: tuple[str, ...] = (
    "compress-level",
    "compress-threads",
    "decompress-threads",
    "throttle-trigger-threshold",
    "cpu-throttle-initial",
    "cpu-throttle-increment",
    "max-bandwidth",
    "downtime-limit",
    "multifd-channels",
    "xbzrle-cache-size",
    "max-cpu-throttle",
    "announce-initial",
    "announce-max",
    "announce-rounds",
    "announce-step",
)

# QAPI MigrationCapability enum order.
CAPABILITIES: tuple[CapabilitySpec, ...] = (
    CapabilitySpec(
        "xbzrle",
        "send XOR-based zero-run-length deltas of re-dirtied pages",
        supported=True,
    ),
    CapabilitySpec(
        "rdma-pin-all",
        "pin all guest RAM at the start of an RDMA migration",
        refused_because="needs RDMA hardware and the rdma: transport",
    ),
    CapabilitySpec(
        "auto-converge",
        "throttle vCPUs when the guest dirties RAM faster than it is sent",
        supported=True,
    ),
    CapabilitySpec(
        "zero-blocks",
        "encode zero blocks in block migration",
        refused_because="a block-migration option, and qemu-hmp emulates no disks",
    ),
    CapabilitySpec(
        "compress", "compress pages with compress-threads zlib workers (both ends)", supported=True
    ),
    CapabilitySpec("events", "emit an event at every migration state change", supported=True),
    CapabilitySpec("postcopy-ram", "start the destination before all RAM is sent", supported=True),
    CapabilitySpec(
        "x-colo",
        "COLO fault tolerance (unstable)",
        refused_because=(
            "needs a secondary VM kept in lockstep by device checkpoints; "
            "qemu-hmp emulates no devices"
        ),
    ),
    CapabilitySpec("release-ram", "free source RAM as postcopy sends it", supported=True),
    CapabilitySpec(
        "block",
        "old-style block migration (-b/-i)",
        refused_because="copies disks, and qemu-hmp emulates no disks",
    ),
    CapabilitySpec(
        "return-path",
        "the source waits for the destination before completing (counted as downtime)",
        supported=True,
    ),
    CapabilitySpec(
        "pause-before-switchover",
        "pause in pre-switchover, vCPUs stopped, until migrate_continue",
        supported=True,
    ),
    CapabilitySpec("multifd", "send pages over multifd-channels parallel channels", supported=True),
    CapabilitySpec(
        "dirty-bitmaps",
        "migrate block dirty bitmaps",
        refused_because="the bitmaps belong to disks, and qemu-hmp emulates no disks",
    ),
    CapabilitySpec("postcopy-blocktime", "measure vCPU blocktime in postcopy", supported=True),
    CapabilitySpec(
        "late-block-activate",
        "activate block devices only when the destination starts",
        refused_because="there are no block devices to activate: qemu-hmp emulates no disks",
    ),
    CapabilitySpec(
        "x-ignore-shared",
        "skip shared RAM blocks (unstable)",
        refused_because=(
            "needs RAM shared with another process (memory-backend share=on); "
            "qemu-hmp's is one private block"
        ),
    ),
    CapabilitySpec(
        "validate-uuid",
        "send -uuid for the destination to check against its own",
        supported=True,
    ),
    CapabilitySpec(
        "background-snapshot",
        "save RAM as it is at the start to exec: while the guest runs (copy-before-write)",
        supported=True,
    ),
    CapabilitySpec(
        "zero-copy-send",
        "send multifd pages from guest RAM with MSG_ZEROCOPY",
        supported=True,
    ),
    CapabilitySpec(
        "postcopy-preempt", "a separate channel for postcopy page requests", supported=True
    ),
    CapabilitySpec(
        "x-compress-auto",
        "adapt compression on/off and level to the measured link and compressor speed",
        supported=True,
        extension=True,
    ),
)

PARAMS_BY_NAME: dict[str, ParamSpec] = {p.name: p for p in PARAMETERS}
CAPS_BY_NAME: dict[str, CapabilitySpec] = {c.name: c for c in CAPABILITIES}

# check_caps_background_snapshot's list, in QEMU's order.
BACKGROUND_SNAPSHOT_INCOMPATIBLE = (
    "postcopy-ram",
    "dirty-bitmaps",
    "postcopy-blocktime",
    "late-block-activate",
    "return-path",
    "multifd",
    "pause-before-switchover",
    "auto-converge",
    "release-ram",
    "rdma-pin-all",
    "compress",
    "xbzrle",
    "x-colo",
    "validate-uuid",
    "zero-copy-send",
)
ZERO_COPY = "Zero copy only available for non-compressed non-TLS multifd migration"
# Each integer kind's limit and the C type QEMU's errors name.
UINT_LIMITS = {
    Kind.UINT8: (UINT8_MAX, "uint8_t"),
    Kind.UINT32: (UINT32_MAX, "uint32_t"),
    Kind.SIZE: (UINT64_MAX, "uint64"),
}


def _typed(spec: ParamSpec, value: ParamValue) -> ParamValue:
    """Reject a value of the wrong type for ``spec`` with the text QEMU's visitors use."""
    if spec.kind is Kind.QMP_ONLY:
        raise MigrationError("The block-bitmap-mapping parameter can only be set through QMP")
    if spec.kind is Kind.BOOL:
        if not isinstance(value, bool):
            raise MigrationError(f"Parameter '{spec.name}' expects 'on' or 'off'")
    elif spec.kind in (Kind.STR, Kind.ENUM, Kind.WORDS):
        if not isinstance(value, str):
            raise MigrationError(f"Parameter '{spec.name}' expects string")
        if spec.choices and value not in spec.choices:
            raise MigrationError(f"Parameter '{spec.name}' does not accept value '{value}'")
    else:
        limit, ctype = UINT_LIMITS[spec.kind]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
            raise MigrationError(f"Parameter '{spec.name}' expects {ctype}")
    return value


def check_ranges(
    params: Mapping[str, ParamValue],
    specs: Mapping[str, ParamSpec],
    order: tuple[str, ...],
    error: Callable[[str, str], str],
) -> None:
    """The range rules of migrate_params_check, in ``order``; ``error(name, expects)`` is the
    release's text for the first value out of its range."""
    for name in order:
        rule = specs[name].check
        assert rule is not None
        value = params[name]
        assert isinstance(value, int)
        low = params[rule.low] if isinstance(rule.low, str) else rule.low
        assert isinstance(low, int)
        bad = not low <= value <= rule.high or (rule.power_of_two and value & (value - 1) != 0)
        if bad:
            raise MigrationError(rule.message or error(name, rule.expects))


def check_background_snapshot(caps: Mapping[str, bool], incompatible: tuple[str, ...]) -> None:
    """check_caps_background_snapshot: the first of ``incompatible`` also on is refused."""
    if caps["background-snapshot"]:
        for other in incompatible:
            if caps[other]:
                raise MigrationError(f"Background-snapshot is not compatible with {other}")


def _check_params(params: Mapping[str, ParamValue], caps: Mapping[str, bool]) -> None:
    """QEMU's migrate_params_check over a whole parameter set."""
    check_ranges(
        params,
        PARAMS_BY_NAME,
        CHECK_ORDER,
        lambda name, expects: f"Parameter '{name.replace('-', '_')}' expects {expects}",
    )
    if caps["zero-copy-send"] and (params["multifd-compression"] != "none" or params["tls-creds"]):
        raise MigrationError(ZERO_COPY)


def _check_caps(
    caps: Mapping[str, bool], params: Mapping[str, ParamValue], old: Mapping[str, bool]
) -> None:
    """QEMU's migrate_caps_check (the checks that can fail on this host), in its order."""
    if caps["postcopy-ram"] and caps["x-ignore-shared"]:
        raise MigrationError("Postcopy is not compatible with ignore-shared")
    check_background_snapshot(caps, BACKGROUND_SNAPSHOT_INCOMPATIBLE)
    if caps["zero-copy-send"] and (
        not caps["multifd"]
        or caps["compress"]
        or caps["xbzrle"]
        or params["multifd-compression"] != "none"
        or params["tls-creds"]
    ):
        raise MigrationError(ZERO_COPY)
    if caps["postcopy-preempt"] and not caps["postcopy-ram"]:
        raise MigrationError("Postcopy preempt requires postcopy-ram")
    if caps["postcopy-preempt"] and caps["compress"]:
        raise MigrationError("Postcopy preempt not compatible with compress")
    if caps["multifd"] and caps["compress"]:
        raise MigrationError("Multifd is not compatible with compress")
    if caps["x-compress-auto"] and not caps["compress"]:  # ours: it steers compress's threads
        raise MigrationError("Capability 'x-compress-auto' requires 'compress'")


def words_value(words: list[str]) -> str:
    """A list of strings as one ``Kind.WORDS`` value: each word after a NUL (which no word
    holds), so ``[]`` and ``[""]`` stay apart."""
    return "".join("\0" + word for word in words)


def value_words(value: ParamValue) -> list[str]:
    return str(value).split("\0")[1:]


ParamsCheck = Callable[[Mapping[str, ParamValue], Mapping[str, bool]], None]
# (the candidate capabilities, the parameters, the capabilities before the change)
CapsCheck = Callable[[Mapping[str, bool], Mapping[str, ParamValue], Mapping[str, bool]], None]


@dataclass(frozen=True)
class ConfigTable:
    """One QEMU release's capabilities and parameters: which exist, their order, defaults,
    rules and error texts. The engine reads its settings by name whatever the release; a name
    the release lacks keeps its ``implicit`` value (what that release does without it)."""

    release: str
    parameters: tuple[ParamSpec, ...]
    capabilities: tuple[CapabilitySpec, ...]
    check_params: ParamsCheck
    check_caps: CapsCheck
    implicit: Mapping[str, ParamValue] = field(default_factory=dict)
    # Whether a failed outgoing migration writes its error to stderr (7.2's migrate_fd_error
    # does; 11.1 leaves it to the status, and to a blocking `migrate`).
    report_failures: bool = True
    # Whether `migrate-incoming` announces `setup` even with the events capability off (7.2).
    incoming_setup_event: bool = True
    # Whether a destination that listens reports the status `setup` (11.1; 7.2 has none).
    listening_is_setup: bool = False
    # Whether a failing migration passes through the state `failing` (11.1's MIGRATION events).
    failing_state: bool = False
    # Whether the error of a stream that broke once open goes to stderr when report_failures
    # is off (11.1's migration thread reports it; a failed connect it leaves to the status).
    report_stream_failures: bool = False
    # The RAM section's id in savevm's "failed to save SaveStateEntry" line (7.2 registers
    # block migration before RAM), and the migration's error when RAM setup meets the broken
    # stream (11.1; "": the write's error).
    ram_section_id: int = 2
    ram_setup_failed: str = ""
    # Whether `file:` URIs exist (11.1: with the mapped-ram capability).
    file_uris: bool = False
    # Whether every dirty-log sync is a MIGRATION_PASS event (7.2: the setup's and the final
    # one's too; 11.1 announces only the syncs of the iterations).
    announce_every_sync: bool = True
    # Whether the source goes from active to device when it stops the guest to switch over
    # (11.1's migration_completion; 7.2 only after pause-before-switchover).
    device_at_switchover: bool = False
    # The error of a capability change on a destination whose incoming migration has started.
    incoming_started: Callable[[Mapping[str, bool], Mapping[str, bool]], str | None] = (
        lambda new, old: None
    )

    @cached_property
    def params_by_name(self) -> dict[str, ParamSpec]:
        return {p.name: p for p in self.parameters}

    @cached_property
    def caps_by_name(self) -> dict[str, CapabilitySpec]:
        return {c.name: c for c in self.capabilities}


TABLE_7_2 = ConfigTable(
    "7.2",
    PARAMETERS,
    CAPABILITIES,
    _check_params,
    _check_caps,
    # 7.2 finds zero pages on the main stream and knows no switchover-ack or mapped-ram.
    implicit={
        "zero-page-detection": "legacy",
        "avail-switchover-bandwidth": 0,
        "switchover-ack": False,
        "mapped-ram": False,
    },
)


def _unknown(name: str) -> MigrationError:
    return MigrationError(f"invalid parameter value: {name}")


class MigrationConfig:
    """The capabilities and parameters of one endpoint. Thread-safe; updates are all-or-nothing."""

    def __init__(self, table: ConfigTable = TABLE_7_2) -> None:
        self.table = table
        self._lock = threading.Lock()
        self._params: dict[str, ParamValue] = {p.name: p.default for p in table.parameters}
        self._caps: dict[str, bool] = {c.name: False for c in table.capabilities}

    def param(self, name: str) -> ParamValue:
        with self._lock:
            value = self._params.get(name)
        return self.table.implicit[name] if value is None else value

    def value(self, name: str) -> ParamValue:
        """A capability's state or a parameter's value, by name (the table's or implicit)."""
        if name in self._caps:
            return self.capability(name)
        if name in self._params:
            return self.param(name)
        return self.table.implicit[name]

    def capability(self, name: str) -> bool:
        with self._lock:
            on = self._caps.get(name)
        return bool(self.table.implicit[name]) if on is None else on

    def params(self) -> dict[str, ParamValue]:
        with self._lock:
            return dict(self._params)

    def capabilities(self) -> dict[str, bool]:
        with self._lock:
            return dict(self._caps)

    def set_parameters(self, values: Mapping[str, ParamValue]) -> None:
        """Overlay ``values`` on a copy of the whole set, check it all, then apply it."""
        for name, value in values.items():
            spec = self.table.params_by_name.get(name)
            if spec is None:
                raise _unknown(name)
            _typed(spec, value)
        with self._lock:
            candidate = {**self._params, **values}
            self.table.check_params(candidate, self._caps)
            self._params = candidate

    def set_capabilities(
        self, caps: Mapping[str, bool], *, incoming: bool, started: bool = False
    ) -> None:
        """Check the new capability set as QEMU does; ``incoming`` marks a destination,
        ``started`` one whose incoming migration has started (it listens).

        QEMU's incoming-only checks (userfaultfd support, multifd over a non-socket URI) cannot
        fail here: every host this runs on has userfaultfd, and every URI is a socket.
        """
        for name in caps:
            if name not in self.table.caps_by_name:
                raise _unknown(name)
        with self._lock:
            candidate = {**self._caps, **caps}
            if started and (error := self.table.incoming_started(candidate, self._caps)):
                raise MigrationError(error)
            self.table.check_caps(candidate, self._params, self._caps)
            self._caps = candidate
