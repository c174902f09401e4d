"""Re-record QEMU 7.2's postcopy: ``python tests/data/qemu-7.2/postcopy/record.py [NAME...]``.

Each HMP case (``cases/NAME.cmds``) runs as ../record.py's do (tests/data/hmp_recorder.py's
format: ``(qemu) CMD``, the exact output, ``# stderr:`` lines; two-endpoint cases prefix
``src: ``/``dst: ``) and is stored in NAME.txt. Each QMP session (``SESSIONS``: two QEMUs
driven over QMP, tests/data/qmp_recorder.py's format, events read as they come) is stored in
NAME.jsonl. The source guest is the one of ../../qemu-11.1/record.py: ``$IMAGE`` (32 MiB of
real binaries at 1 MiB) so that RAM is not all zero and a 1M max-bandwidth keeps precopy
going for seconds, and ``$DIRTIER`` (a kernel that increments a word in each of 256 pages at
80 MiB for ever) so that, after the switch, the destination's vCPU touches pages it does not
have yet and asks the source for them. Without NAME, everything is recorded.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))
from hmp_recorder import Recorder  # noqa: E402
from qmp_recorder import NEG, Pair, Record, caps, free_port, run, x  # noqa: E402

QEMU = ["qemu-system-x86_64", "-machine", "pc,accel=tcg", "-smp", "1", "-display", "none"]
QEMU += ["-nodefaults"]
RAM = ["-m", "256"]
SLOW = {"max-bandwidth": 1 << 20, "max-postcopy-bandwidth": 2 << 20}  # as the HMP cases


def _qemu11_record() -> ModuleType:
    """../../qemu-11.1/record.py, whose guest files these cases use too."""
    path = HERE.parent.parent / "qemu-11.1" / "record.py"
    spec = importlib.util.spec_from_file_location("qemu11_record", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Session:
    """A QMP pair in a scratch folder: ports and guest files, named back in what is written."""

    def __init__(self, folder: Path, made: dict[str, Callable[[Path], Path]]) -> None:
        self.pair = Pair(QEMU, str(folder))
        self.port, self.rport = free_port(), free_port()
        self.files = {name: str(make(folder)) for name, make in made.items()}

    def uri(self, port: int) -> str:
        return f"tcp:127.0.0.1:{port}"

    def start(self, capabilities: list[str]) -> None:
        """Both QEMUs, ``capabilities`` on both, the source's bandwidths low."""
        guest = ["-device", f"loader,file={self.files['$IMAGE']},addr=0x100000,force-raw=on"]
        argv = {"dst": [*RAM, "-incoming", self.uri(self.port)], "src": [*RAM, *guest]}
        argv["src"] += ["-kernel", self.files["$DIRTIER"]]
        for name in ("dst", "src"):
            self.pair.start(name, argv[name])
            self.pair.step(name, NEG)
            on = dict.fromkeys((c.replace("-", "_") for c in capabilities), True)
            self.pair.step(name, x("migrate-set-capabilities", caps(**on)))
        self.pair.step("src", x("migrate-set-parameters", SLOW))

    def status(self, name: str, *wanted: str) -> None:
        """Read ``name``'s events until its MIGRATION event says one of ``wanted``."""

        def until(msg: Record) -> bool:
            return msg.get("event") == "MIGRATION" and msg["data"]["status"] in (*wanted, "failed")

        got = self.pair.expect(name, until)["data"]["status"]
        if got not in wanted:
            raise RuntimeError(f"{name}: {got}, not {wanted}")

    def query(self, *names: str) -> None:
        for name in names:
            self.pair.step(name, x("query-migrate"))
            self.pair.step(name, x("query-status"))

    def switch(self) -> None:
        """Migrate, see precopy on both sides, start postcopy, see postcopy on both."""
        self.pair.step("src", x("migrate", {"uri": self.uri(self.port)}))
        self.status("src", "active")
        self.status("dst", "active")
        self.query("src", "dst")
        self.pair.step("src", x("migrate-start-postcopy"))
        self.status("src", "postcopy-active")
        self.status("dst", "postcopy-active")
        self.query("src", "dst")

    def finish(self) -> None:
        self.status("src", "completed")
        self.status("dst", "completed")
        self.query("src", "dst")

    def text(self) -> str:
        """The session as JSON lines, this run's ports and files named as the HMP cases do."""
        text = "".join(json.dumps(r) + "\n" for r in self.pair.out)
        for port, name in ((self.port, "$PORT"), (self.rport, "$RPORT")):
            text = text.replace(f":{port}", f":{name}")
        for name, value in self.files.items():
            text = text.replace(value, name)
        return text


def qmp_postcopy(s: Session) -> None:
    """A whole postcopy migration with events and postcopy-blocktime on both sides."""
    s.start(["events", "postcopy-ram", "postcopy-blocktime"])
    s.query("dst")
    s.switch()
    s.pair.step("src", x("migrate-start-postcopy"))  # twice
    s.finish()
    s.pair.step("src", x("migrate-start-postcopy"))  # after completion


def qmp_recover(s: Session) -> None:
    """migrate-pause on the source in postcopy, then migrate-recover and migrate resume."""
    s.start(["events", "postcopy-ram"])
    s.pair.step("src", x("migrate", {"uri": s.uri(s.port)}))
    s.status("src", "active")
    s.pair.step("src", x("migrate-pause"))  # precopy: refused
    s.pair.step("src", x("migrate", {"uri": s.uri(s.rport), "resume": True}))
    s.pair.step("src", x("migrate-start-postcopy"))
    s.status("src", "postcopy-active")
    s.status("dst", "postcopy-active")
    s.pair.step("dst", x("migrate-recover", {"uri": s.uri(s.rport)}))  # not paused: refused
    s.pair.step("src", x("migrate-pause"))
    s.status("src", "postcopy-paused")
    s.status("dst", "postcopy-paused")
    s.query("src", "dst")
    s.pair.step("dst", x("migrate-recover", {"uri": s.uri(s.rport)}))
    s.pair.step("src", x("migrate", {"uri": s.uri(s.rport), "resume": True}))
    s.status("src", "postcopy-active")
    s.status("dst", "postcopy-active")
    s.finish()


def qmp_kill_dst(s: Session) -> None:
    """The destination SIGKILLed in postcopy: what the source reports."""
    s.start(["events", "postcopy-ram"])
    s.switch()
    s.pair.kill("dst")
    s.status("src", "postcopy-paused")
    s.query("src")


def qmp_kill_src(s: Session) -> None:
    """The source SIGKILLed in postcopy: what the destination reports."""
    s.start(["events", "postcopy-ram"])
    s.switch()
    s.pair.kill("src")
    s.status("dst", "postcopy-paused")
    s.query("dst")


def qmp_cancel(s: Session) -> None:
    """migrate_cancel on the source in postcopy-active, then cont there."""
    s.start(["events", "postcopy-ram"])
    s.switch()
    s.pair.step("src", x("migrate_cancel"))
    s.status("src", "cancelled")
    s.status("dst", "postcopy-paused")
    s.query("src", "dst")
    s.pair.step("src", x("cont"))
    s.query("src")


SESSIONS: dict[str, Callable[[Session], None]] = {
    f.__name__: f for f in (qmp_postcopy, qmp_recover, qmp_kill_dst, qmp_kill_src, qmp_cancel)
}
# One QEMU over QMP: the postcopy commands' errors and the capability checks.
ERRORS = [
    NEG,
    x("migrate-start-postcopy"),
    x("migrate-pause"),
    x("migrate-recover", {"uri": "tcp:127.0.0.1:1"}),
    x("migrate", {"uri": "tcp:127.0.0.1:1", "resume": True}),
    x("migrate-set-capabilities", caps(postcopy_preempt=True)),
    x("migrate-set-capabilities", caps(postcopy_ram=True, postcopy_preempt=True, compress=True)),
    x("migrate-set-capabilities", caps(postcopy_ram=True, multifd=True, compress=True)),
    x("migrate-set-capabilities", caps(postcopy_ram=True)),
    x("migrate-start-postcopy"),
    x("query-migrate-capabilities"),
]


def record(names: list[str]) -> None:
    guest = _qemu11_record()
    made = {
        "$IMAGE": guest.beside("image.bin", guest.make_image),
        "$DIRTIER": guest.beside("dirtier.bin", guest.make_dirtier),
    }
    recorder = Recorder(HERE, QEMU, made=made)
    cases = recorder.cases()
    with tempfile.TemporaryDirectory() as root:
        for name in names or [*sorted(cases), *SESSIONS, "qmp_errors"]:
            folder = Path(root) / name
            folder.mkdir()
            if name in cases:
                (HERE / f"{name}.txt").write_text(recorder.run(cases[name], folder))
            elif name == "qmp_errors":
                records = run(QEMU, RAM, ERRORS, parent=str(folder))
                (HERE / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
            else:
                session = Session(folder, made)
                try:
                    SESSIONS[name](session)
                finally:
                    session.pair.close()
                (HERE / f"{name}.jsonl").write_text(session.text())
            print(name)


if __name__ == "__main__":
    record(sys.argv[1:])
