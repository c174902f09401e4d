"""Replay QEMU 7.2's postcopy recordings (tests/data/qemu-7.2/postcopy/) against our monitor.

Sessions of one endpoint (help, errors in each state, capability checks) must match byte for
byte (EXACT). Migrations between two endpoints (FLOWS: two in-process Machines and monitors,
over real sockets) must match line by line with figures by pattern: every number is ``\\d+``
(`postcopy vcpu blocktime` is a list whose length depends on its values: ``0,404`` or ``0``),
and the lines QEMU prints only while their figure is non-zero (OPTIONAL) are left out on both
sides, since a page request or a dirty rate comes and goes with timing. Each ``# polled
until`` step is repeated until its pattern matches and, when several statuses would, until the
status recorded; an unpolled ``info migrate`` that follows an asynchronous action (on the other
endpoint, or a ``migrate``) waits for its recorded status (``settled``). stderr lines are
compared per endpoint over the whole session (they come from engine threads, in no fixed
step).

Deterministic by construction: the source's postcopy background scan is held from the switch
until a step waits for the end, so every step recorded during postcopy-active (a kill, a cut, a
pause) happens during postcopy-active here too. How the other recorded actions are replayed:

- ``$PROXY`` (``cut``, ``preempt_cut``): a relay (tests/proxy.py) carrying every channel the
  recording's ``# cut: N connections`` counts (the main one and postcopy-preempt's); ``@cut``
  severs all at once.
- ``@stop`` / ``@cont`` (``pause_src``, SIGSTOP/SIGCONT mid-recovery): ``Freeze``, a relay on the
  recovery connection in which a stopped destination has not accepted it and a stopped source
  has not read the answer, which is what each peer of a stopped QEMU sees.
- ``resume_blocking``: a blocking ``migrate -r`` returns at once, as QEMU's does, the held scan
  going on when the case waits for ``completed``.
- ``blocktime_smp2``: ``-smp 2`` on both sides, checked further on the engine's figures (two
  vCPUs, the total at most the least of them).
- ``combo_dst_only``: its precopy ends in milliseconds here (32 MiB, not QEMU's 256), so the
  source goes through a relay that holds its first page batch until the case waits for the end.
- Where ours differs by design (BY_DESIGN, ``combo_src_only``: ours answers a refused stream
  with its reason, QEMU's destination exits and its source fails writing) the recorded text is
  mapped to ours; where QEMU 7.2 has a bug ours has not, ours must do better: ``combo_multifd``
  (QEMU's destination aborts after loading: ours completes) and ``combo_preempt_multifd``
  (QEMU's postcopy stalls: ours completes once the held scan goes).

Not replayed: ``combo_preempt_dst_only``, postcopy-preempt on the destination only. QEMU 7.2's
destination waits for ever for a channel the source never opens (its source stalls in
postcopy-active); ours refuses the mismatch at the handshake with a clear error
(``test_postcopy.py::test_a_destination_waiting_for_a_preempt_channel_refuses_a_source_without``):
replaying it would need a hang, which our rules forbid. (``combo_preempt_src_only`` replays: the
destination closes the extra channel with QEMU's line, the source falls back to the main
stream.)

The guest is smaller (32 MiB) and its dirtier a random-writer over 1 MiB, as QEMU's kernel
dirties 256 pages.
"""

from __future__ import annotations

import io
import re
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import ClassVar

import pytest
from proxy import DOWN, UP, Action, RecordProxy, Rule
from test_postcopy import resident

from engine import wire
from engine.machine import Machine, MachineOptions
from engine.source import OutgoingMigration
from engine.state import MigrationStatus
from hmp.cli import parse_smp
from hmp.harness.endpoint import free_port
from hmp.monitor.session import Monitor

sys.path.insert(0, str(Path(__file__).parent / "data"))  # the recorder is not a package
from hmp_recorder import Recording, Step

ORACLE = Path(__file__).parent / "data" / "qemu-7.2" / "postcopy"
EXACT = ["help", "start_errors", "wrong_states", "dst_errors", "compat_set", "compat_preempt"]
FLOWS = [
    "plain",
    "blocktime",
    "blocktime_smp2",
    "preempt",
    "release_ram",
    "cut",
    "preempt_cut",
    "kill_dst",
    "kill_src",
    "pause_dst",
    "pause_src",
    "resume_blocking",
    "cancel_postcopy",
    "postcopy_settings",
    "combo_compress",
    "combo_xbzrle",
    "combo_auto_converge",
    "combo_release_only",
    "combo_blocktime_only",
    "combo_multifd",
    "combo_preempt_multifd",
    "combo_preempt_src_only",
    "combo_src_only",
    "combo_dst_only",
]
# postcopy-preempt on the destination only: refused at our handshake (the docstring says why)
NOT_REPLAYED = ("combo_preempt_dst_only",)
OPTIONAL = ("dirty pages rate:", "postcopy request count:", "precopy ram:", "downtime ram:")
OPTIONAL += ("postcopy ram:",)
RAM = 32 << 20
DIRTIER = "random-writer,rate=20000,wss=1M"
# QEMU 7.2's source prints this at every pause (the README), but a recording holds only what
# came before the source's next step, so some runs caught it and some did not: it is
# compared apart, ours must say it whenever the source paused.
PAUSED = "Detected IO failure for postcopy. Migration paused."
POSTCOPY_OFF = "RAM postcopy is disabled but have 16 byte advise"
REFUSED = f"load of migration failed: {POSTCOPY_OFF}"
# Where ours differs from the recording by design (README: a refused stream is answered with
# its reason, QEMU's destination exits and its source fails writing): per endpoint, a
# recorded stderr line or output text → ours (None: ours has no such line).
BY_DESIGN: dict[str, dict[str, dict[str, str | None]]] = {
    "combo_src_only": {
        "src": {"Unable to write to socket: Bad file descriptor": POSTCOPY_OFF},
        "dst": {POSTCOPY_OFF: None, "load of migration failed: Invalid argument": REFUSED},
    },
}
# The case's precopy would end before its first poll here (32 MiB, not QEMU's 256): the
# source migrates through a relay that holds its first page batch until a step awaits the end.
HELD_PRECOPY = ("combo_dst_only",)
# QEMU 7.2 bugs ours does not have. combo_multifd: the destination aborts at its cleanup
# (yank_unregister_instance assertion, exit -6), after loading everything; ours completes
# (its stderr is not compared). combo_preempt_multifd: postcopy stalls for ever; the replay
# matches the steps while the held scan keeps postcopy-active, then lets it go: ours completes.
ABORTED = {"combo_multifd": "dst"}
STALLED = ("combo_preempt_multifd",)
POLL_S = 0.05  # between two polls of an `@until` step (QEMU's recorder polled too)
UNTIL_S = 60.0


class Endpoint:
    """One in-process endpoint: a Machine and a monitor whose stderr is collected."""

    def __init__(self, opts: MachineOptions) -> None:
        self.out, self.err = io.StringIO(), io.StringIO()
        self.machine = Machine(opts, notify=lambda message: self.mon.error_report(message))
        self.mon = Monitor(self.machine, self.out, self.err)
        self.alive = True

    def run(self, line: str) -> str:
        self.out.seek(0), self.out.truncate()
        self.mon.execute(line)
        return self.out.getvalue()

    def stderr(self) -> Counter[str]:
        return Counter(line.removeprefix("qemu-hmp: ") for line in self.err.getvalue().splitlines())

    def close(self) -> None:
        if self.alive:
            self.alive = False
            self.machine.close()


def options(argv: str, incoming: bool) -> MachineOptions:
    return MachineOptions(
        ram_size=RAM,
        incoming="tcp:127.0.0.1:0" if incoming else None,
        workload=DIRTIER if "-kernel" in argv or "-incoming" in argv else "zero",
        start_paused=" -S" in f" {argv}",
        smp=parse_smp(smp[1]) if (smp := re.search(r"-smp (\S+)", argv)) else 1,
    )


VCPU_BLOCKTIME = "postcopy vcpu blocktime: "


def pattern(line: str) -> str:
    if line.startswith(VCPU_BLOCKTIME):  # how many items depends on the values (0,404 or 0)
        return re.escape(VCPU_BLOCKTIME) + r"\d+(?:[-,]\d+)*"
    return re.sub(r"\d+", r"\\d+", re.escape(line))


def figures(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith(OPTIONAL)]


def same(ours: str, theirs: str) -> bool:
    a, b = figures(ours), figures(theirs)
    return len(a) == len(b) and all(re.fullmatch(pattern(t), o) for o, t in zip(a, b, strict=True))


def settled(step: Step, last: Step | None, theirs: str) -> str:
    """The status an unpolled ``info migrate`` waits for when it follows an asynchronous action.

    That is a step on another endpoint than the ``last`` step (a peer's
    cancel, kill or cut reaches this endpoint asynchronously, in QEMU as here), or one right
    after a ``migrate`` (a blocking ``migrate -r`` returns before the reconnection, as QEMU's
    does). The recorder typed it after that effect had landed, so the replay waits for the
    recorded status as a poll would.
    """
    status = re.search(r"^Migration status: .*$", theirs, re.MULTILINE)
    if step.typed != "info migrate" or status is None:
        return ""
    if last is None or last.endpoint != step.endpoint or last.typed.startswith("migrate "):
        return f"^{re.escape(status.group())}$"
    return ""


def qemu_stderr(lines: list[str]) -> Counter[str]:
    return Counter(line.removeprefix("qemu-system-x86_64: ") for line in lines)


def awaits_the_end(until: str) -> bool:
    """A poll that only the end of postcopy satisfies (not one a running migration meets)."""
    if until.endswith("blocktime"):
        return True
    ends, runs = "Migration status: completed", ("active", "postcopy-active")
    return bool(re.search(until, ends)) and not any(
        re.search(until, f"Migration status: {status}") for status in runs
    )


def stderr_of(text: str) -> dict[str, Counter[str]]:
    """Each endpoint's recorded stderr lines, also those noted before its first step."""
    endpoint, found = "", {"src": Counter[str](), "dst": Counter[str]()}
    for line in text.splitlines():
        if line.startswith("# endpoint: "):
            endpoint = line.removeprefix("# endpoint: ")
        elif line.startswith("# stderr: "):
            found[endpoint] += qemu_stderr([line.removeprefix("# stderr: ")])
    return found


def test_every_hmp_recording_is_replayed_or_said_why() -> None:
    recorded = {path.stem for path in ORACLE.glob("*.txt")}
    assert recorded == {*EXACT, *FLOWS, *NOT_REPLAYED}


@pytest.mark.parametrize("case", EXACT)
def test_single_endpoint_sessions_match_byte_for_byte(case: str) -> None:
    rec = Recording.parse((ORACLE / f"{case}.txt").read_text())
    argv = rec.argv[""]
    ep = Endpoint(options(argv, "-incoming" in argv))
    try:
        subst = {"$RPORT": str(free_port())}
        address = ep.machine.query_migrate().socket_address
        if address:
            subst["$PORT"] = address[0].rsplit(":", 1)[1]
        failures, expected_err = [], Counter[str]()
        for step in rec.steps:
            line, theirs = step.typed, step.output
            for key, value in subst.items():
                line, theirs = line.replace(key, value), theirs.replace(key, value)
            ours = ep.run(line)
            if ours != theirs:
                failures.append(f"(qemu) {line}\n--- qemu\n{theirs}--- ours\n{ours}")
            expected_err += qemu_stderr(step.stderr)
        assert not failures, "\n".join(failures)
        assert ep.stderr() == expected_err
    finally:
        ep.close()


class Freeze:
    """pause_src's SIGSTOP and SIGCONT, in process, as the peer sees them: from the
    destination's @stop on, the recovery connection goes through a relay. A stopped
    destination does not accept: the source's connect lands in the backlog (the relay takes it)
    and reaches the destination at its @cont. A stopped source does not read: the
    destination's answer (RECEIVED) waits in the relay until the source's @cont."""

    ORDER: ClassVar[list[tuple[str, str]]] = [
        ("dst", "@stop"),
        ("src", "@stop"),
        ("dst", "@cont"),
        ("src", "@cont"),
    ]

    def __init__(self, target: str) -> None:
        self.accepting = threading.Event()
        rule = Rule(DOWN, wire.Rec.RECEIVED, Action.HOLD)
        self.relay = RecordProxy(target, rule, gate=self.accepting)
        self.relay.start()
        self.port = self.relay.uri.rsplit(":", 1)[1]

    def act(self, step: Step) -> None:
        if (step.endpoint, step.typed) == ("dst", "@cont"):
            self.accepting.set()
        elif (step.endpoint, step.typed) == ("src", "@cont"):
            self.relay.release()

    def close(self) -> None:
        self.accepting.set()
        self.relay.release()


def by_design(case: str, endpoint: str, lines: Counter[str]) -> Counter[str]:
    """A recorded endpoint's stderr lines as ours are by design (BY_DESIGN)."""
    table = BY_DESIGN.get(case, {}).get(endpoint, {})
    out = Counter[str]()
    for line, n in lines.items():
        mapped = table.get(line, line)
        if mapped is not None:
            out[mapped] += n
    return out


def recorded_output(case: str, step: Step) -> str:
    """The step's recorded output, with the texts BY_DESIGN maps."""
    output = step.output
    for theirs, ours in BY_DESIGN.get(case, {}).get(step.endpoint, {}).items():
        output = output.replace(theirs, ours or "")
    return output


def completes(ep: Endpoint) -> bool:
    """Whether the endpoint's migration reaches `completed` (polled, as the recorder did)."""
    deadline, tick = time.monotonic() + UNTIL_S, threading.Event()
    while ep.machine.query_migrate().status is not MigrationStatus.COMPLETED:
        if time.monotonic() > deadline:
            return False
        tick.wait(POLL_S)
    return True


def status_of(text: str) -> str:
    """A pattern for the ``Migration status`` line of ``text`` ('' when it has none)."""
    status = re.search(r"^Migration status: .*$", text, re.MULTILINE)
    return f"^{re.escape(status.group())}$" if status else ""


@pytest.mark.parametrize("case", FLOWS)
def test_migration_sessions_match_by_pattern(case: str) -> None:
    text = (ORACLE / f"{case}.txt").read_text()
    rec = Recording.parse(text)
    eps = {
        "dst": Endpoint(options(rec.argv["dst"], incoming=True)),
        "src": Endpoint(options(rec.argv["src"], incoming=False)),
    }
    proxy: RecordProxy | None = None
    address = eps["dst"].machine.query_migrate().socket_address
    assert address
    port = address[0].rsplit(":", 1)[1]
    subst = {"$PORT": port, "$RPORT": str(free_port())}
    # QEMU's relay carried each channel: the main one, and postcopy-preempt's
    cut = re.search(r"^# cut: (\d+) connection", text, re.MULTILINE)
    if case in HELD_PRECOPY:
        proxy = RecordProxy(address[0], Rule(UP, wire.Rec.BATCH, Action.HOLD))
    elif any("$PROXY" in s.typed for s in rec.steps):
        proxy = RecordProxy(address[0], channels=int(cut[1]) - 1 if cut else 0)
        subst["$PROXY"] = proxy.uri.rsplit(":", 1)[1]
    if proxy is not None:
        proxy.start()
    tick = threading.Event()  # never set: the pause between two polls
    failures: list[str] = []
    held: OutgoingMigration | None = None
    rss: list[int] = []
    previous: Step | None = None
    freeze: Freeze | None = None
    actions = [(s.endpoint, s.typed) for s in rec.steps if s.typed in ("@stop", "@cont")]
    assert actions in ([], Freeze.ORDER), actions  # what Freeze models
    try:
        for step in rec.steps:
            ep = eps[step.endpoint]
            before, previous = previous, step
            if step.typed == "@kill":
                ep.close()
                continue
            if step.typed == "@cut":
                assert proxy is not None
                assert cut and proxy.connections == int(cut[1])
                proxy.cut()
                continue
            if step.typed in ("@stop", "@cont"):
                freeze = freeze or Freeze(f"tcp:127.0.0.1:{subst['$RPORT']}")
                freeze.act(step)
                continue
            if step.typed == "@rss":  # the source's guest RAM resident (ours is in-process)
                rss.append(resident(eps["src"].machine.ram.array.ctypes.data))
                continue
            line, theirs = step.typed, recorded_output(case, step)
            for key, value in subst.items():
                line, theirs = line.replace(key, value), theirs.replace(key, value)
            if freeze is not None and step.endpoint == "src":
                line = line.replace(f":{subst['$RPORT']}", f":{freeze.port}")
            if case in HELD_PRECOPY and line.startswith("migrate "):
                assert proxy is not None
                line = line.replace(f":{port}", f":{proxy.uri.rsplit(':', 1)[1]}")
            if held is not None and awaits_the_end(step.until):
                held.background.set()  # the case waits for the end: let the rest go
                held = None
                if proxy is not None and case in HELD_PRECOPY:
                    proxy.release()
            # A poll that several statuses satisfy waits for the one recorded.
            untils = (
                [step.until, status_of(theirs)] if step.until else [settled(step, before, theirs)]
            )
            ours = ep.run(line)
            deadline = time.monotonic() + UNTIL_S
            while not all(re.search(u, ours, re.MULTILINE) for u in untils if u):
                assert time.monotonic() < deadline, f"{line}: no {untils!r} in {ours}"
                tick.wait(POLL_S)
                ours = ep.run(line)
            mig = eps["src"].machine._outgoing
            if line.startswith("migrate -d tcp") and isinstance(mig, OutgoingMigration):
                held = mig
                mig.background.clear()  # postcopy stays active until a step awaits the end
            if not same(ours, theirs):
                diff = f"(qemu) {line}\n--- qemu\n{theirs}--- ours\n{ours}"
                failures.append(f"{step.endpoint}: {diff}")
        for name, theirs in stderr_of(text).items():
            ep = eps[name]
            theirs = by_design(case, name, theirs)
            for key, value in subst.items():
                theirs = Counter({k.replace(key, value): n for k, n in theirs.items()})
            ours_err = ep.stderr()
            if name == "src":
                paused = any("postcopy-paused" in s.output for s in rec.steps if s.endpoint == name)
                if paused and not ours_err[PAUSED]:
                    failures.append(f"src stderr: no {PAUSED!r}")
                del theirs[PAUSED], ours_err[PAUSED]
            if ep.alive and ABORTED.get(case) != name and ours_err != theirs:
                failures.append(f"{name} stderr: qemu {dict(theirs)}, ours {dict(ours_err)}")
        if case in STALLED and held is not None:  # QEMU's never ended: ours does
            held.background.set()
            held = None
        for name in (ABORTED.get(case), *(("src", "dst") if case in STALLED else ())):
            if name:
                assert completes(eps[name]), name
        if case == "blocktime_smp2":  # one figure a vCPU; the total only while all waited
            info = eps["dst"].machine.query_migrate()
            assert info.postcopy_vcpu_blocktime and len(info.postcopy_vcpu_blocktime) == 2
            assert info.postcopy_blocktime is not None
            assert info.postcopy_blocktime <= min(info.postcopy_vcpu_blocktime)
        if case == "release_ram":  # the source gave back what postcopy sent
            assert len(rss) == 2 and rss[1] < rss[0], rss
        assert not failures, "\n".join(failures)
    finally:
        if held is not None:
            held.background.set()
        if proxy is not None:
            proxy.release()
        if freeze is not None:
            freeze.close()
        for ep in eps.values():
            ep.close()
