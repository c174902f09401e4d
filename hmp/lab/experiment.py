"""One measured migration between two real qemu-hmp processes, set up with monitor commands.

What `bench` and `demo` run: a destination and a source process (hmp/harness/endpoint.py),
the capabilities and parameters typed at both monitors exactly as a person would,
`migrate -d`, then the source's `query-migrate` polled over QMP until the end, as a tool
reads QEMU. Figures come from the source's own last `query-migrate`; peak RSS of each
process from /proc.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.stats import Sample
from hmp.harness import MIGRATION_ENDED, Endpoint, free_port, resolve_argv
from hmp.monitor import series_from_json

POLL_S = 0.2  # how often progress is read while the migration runs
CANCEL_S = 30.0  # past the setup's timeout: how long a cancelled migration may take to end


@dataclass(frozen=True)
class Setup:
    """A migration to run; sizes and rates use the monitor's own spellings."""

    name: str
    ram: str = "2G"
    workload: str = "idle"
    seed: int = 1
    max_bandwidth: str = "32M"  # migrate_set_parameter max-bandwidth (MiB/s by default)
    link: int = 0  # x-link-bandwidth, bytes/s of an emulated network (0: loopback's own)
    compress: bool = False
    method: str = "zlib"  # x-compress-method
    level: int = 1
    threads: int = 8  # compress-threads
    dthreads: int = 2  # decompress-threads
    multifd: int = 0  # multifd-channels; 0 leaves the capability off
    multifd_compression: str = "none"
    auto_converge: bool = False
    compress_auto: bool = False  # x-compress-auto: the adaptive policy steers compression
    xbzrle: bool = False  # the xbzrle capability (the source's; a destination needs nothing)
    xbzrle_cache: str = "64M"  # xbzrle-cache-size
    # postcopy-ram on both ends, switched once precopy has synced its bitmap twice; the
    # destination runs the same workload from the switch on (its vCPU faults pages in).
    postcopy: bool = False
    preempt: bool = False  # postcopy-preempt on both ends
    max_postcopy_bandwidth: str = "0"
    timeout: float = 120.0

    def source_commands(self) -> list[str]:
        cmds = [f"migrate_set_parameter max-bandwidth {self.max_bandwidth}"]
        if self.link:
            cmds.append(f"migrate_set_parameter x-link-bandwidth {self.link}B")
        if self.compress:
            cmds += [
                f"migrate_set_parameter compress-threads {self.threads}",
                f"migrate_set_parameter compress-level {self.level}",
            ]
        if self.auto_converge:
            cmds.append("migrate_set_capability auto-converge on")
        if self.compress_auto:
            cmds.append("migrate_set_capability x-compress-auto on")
        if self.xbzrle:
            cmds += [
                "migrate_set_capability xbzrle on",
                f"migrate_set_parameter xbzrle-cache-size {self.xbzrle_cache}",
            ]
        if self.postcopy:
            cmds.append(
                f"migrate_set_parameter max-postcopy-bandwidth {self.max_postcopy_bandwidth}"
            )
        return self.common_commands() + cmds

    def destination_commands(self) -> list[str]:
        cmds = self.common_commands()
        if self.compress:
            cmds.append(f"migrate_set_parameter decompress-threads {self.dthreads}")
        if self.postcopy:
            cmds.append("migrate_set_capability postcopy-blocktime on")
        return cmds

    def common_commands(self) -> list[str]:
        cmds = []
        if self.compress:
            cmds += [
                "migrate_set_capability compress on",
                f"migrate_set_parameter x-compress-method {self.method}",
            ]
        if self.multifd:
            cmds += [
                "migrate_set_capability multifd on",
                f"migrate_set_parameter multifd-channels {self.multifd}",
                f"migrate_set_parameter multifd-compression {self.multifd_compression}",
            ]
        if self.postcopy:
            cmds.append("migrate_set_capability postcopy-ram on")
        if self.preempt:
            cmds.append("migrate_set_capability postcopy-preempt on")
        return cmds


def figure(info: Mapping[str, Any], key: str) -> float:
    """A number of a `query-migrate` answer by its JSON keys, dotted: ``total-time`` (ms),
    ``ram.transferred`` (bytes); 0 when absent (a migration that ended before it was measured)."""
    value: Any = info
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return 0.0
        value = value[part]
    return float(value)


@dataclass
class Result:
    setup: Setup
    status: str
    info: dict[str, Any]  # the source's last `query-migrate`
    rss_kib: dict[str, int]  # peak RSS per endpoint
    series: list[Sample] = field(default_factory=list)  # the engine's samples (x_migrate_export)
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU time each used while migrating
    dst_info: dict[str, Any] = field(default_factory=dict)  # the destination's query-migrate
    faults: dict[str, Any] = field(default_factory=dict)  # its x-query-postcopy-faults

    def number(self, key: str) -> float:
        """``figure`` of the final `query-migrate` (``total-time``, ``ram.transferred``...)."""
        return figure(self.info, key)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


@contextmanager
def migrating(setup: Setup, prefix: Sequence[str] = ()) -> Iterator[tuple[Endpoint, Endpoint]]:
    """A destination and a source process, configured, with `migrate -d` issued: (src, dst).
    ``prefix`` starts both elsewhere (``ip netns exec NS``: a shaped link's namespace)."""
    port = free_port()
    argv = ["qemu-hmp", "-m", setup.ram]
    guest = ["--workload", setup.workload, "--seed", str(setup.seed)]
    incoming = ["-incoming", f"tcp:127.0.0.1:{port}", *(guest if setup.postcopy else [])]
    with (
        Endpoint([*prefix, *resolve_argv([*argv, *incoming])], name="dst", qmp=True) as dst,
        Endpoint([*prefix, *resolve_argv([*argv, *guest])], name="src", qmp=True) as src,
    ):
        dst.wait_ready(60)
        src.wait_ready(60)
        for endpoint, commands in (
            (dst, setup.destination_commands()),
            (src, setup.source_commands()),
        ):
            for command in commands:
                answer = endpoint.execute(command, 10)
                if answer:
                    raise RuntimeError(f"{endpoint.name}: {command}: {answer.strip()}")
        command = f"migrate -d tcp:127.0.0.1:{port}"
        answer = src.execute(command, 10)
        if answer:
            raise RuntimeError(f"src: {command}: {answer.strip()}")
        yield src, dst


def run(
    setup: Setup,
    progress: Callable[[dict[str, Any]], None] | None = None,
    prefix: Sequence[str] = (),
) -> Result:
    """Run one migration; ``progress`` sees the source's `query-migrate` at every poll."""
    with migrating(setup, prefix) as (src, dst):
        ends = {"src": src, "dst": dst}
        cpu0 = {name: cpu_seconds(ep.proc.pid) for name, ep in ends.items()}  # just migrating

        switched = False

        def ended(info: dict[str, Any]) -> bool:
            nonlocal switched
            if progress:
                progress(info)
            if setup.postcopy and not switched and figure(info, "ram.dirty-sync-count") >= 2:
                switched = True  # precopy is under way and has not converged: switch
                src.execute("migrate_start_postcopy", 10)
            if info.get("status") == "active" and figure(info, "total-time") > setup.timeout * 1000:
                src.qmp.execute("migrate_cancel")
            return info.get("status") in MIGRATION_ENDED

        info = src.qmp.poll("query-migrate", ended, setup.timeout + CANCEL_S, POLL_S)
        cpu = {name: cpu_seconds(ep.proc.pid) - cpu0[name] for name, ep in ends.items()}
        rss = {"src": peak_rss_kib(src.proc.pid), "dst": peak_rss_kib(dst.proc.pid)}
        with tempfile.TemporaryDirectory() as tmp:
            export = Path(tmp) / "series.json"
            src.execute(f'x_migrate_export "{export}"', 10)
            series = series_from_json(export.read_text())
        dst_info: dict[str, Any] = {}
        faults: dict[str, Any] = {}
        if setup.postcopy:
            dst_info = dst.qmp.poll(
                "query-migrate",
                lambda r: r.get("status") not in ("active", "postcopy-active"),
                setup.timeout + CANCEL_S,
            )
            faults = dst.qmp.execute("x-query-postcopy-faults")
        return Result(setup, str(info["status"]), info, rss, series, cpu, dst_info, faults)
