"""The QMP server driven by a real QMP client nobody here wrote: ``qemu.qmp.QMPClient``."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import EventListener, ExecuteError, QMPClient

from engine.machine import Machine, MachineOptions
from hmp.monitor.session import Monitor
from hmp.qmp.server import QmpServer, parse_qmp_spec
from tests.listening import wait_listening
from tests.qmp_helpers import RawClient, endpoint, load

PAUSED = MachineOptions(ram_size=64 << 20, start_paused=True)
TIMEOUT = 30.0


@asynccontextmanager
async def client(address: str | tuple[str, int]) -> AsyncIterator[QMPClient]:
    qmp = QMPClient("test")
    await asyncio.wait_for(qmp.connect(address), TIMEOUT)
    try:
        yield qmp
    finally:
        await qmp.disconnect()


@contextmanager
def served(tmp_path: Path, opts: MachineOptions = PAUSED, name: str = "qmp") -> Iterator[str]:
    """A unix-socket QMP endpoint; yields the socket path."""
    with endpoint(tmp_path, opts, name) as server:
        yield server.spec.address.path


async def error_of(qmp: QMPClient, cmd: str, args: dict[str, Any] | None = None) -> Any:
    with pytest.raises(ExecuteError) as info:
        await qmp.execute(cmd, args)
    return info.value.error.error  # the ErrorInfo: class_, desc


async def next_event(listener: EventListener) -> Any:
    return await asyncio.wait_for(listener.get(), TIMEOUT)


def test_greeting_negotiation_and_queries(tmp_path: Path) -> None:
    async def run() -> None:
        with served(tmp_path) as path:
            async with client(path) as qmp:
                assert qmp.greeting is not None
                greeting = qmp.greeting._asdict()["QMP"]
                assert greeting["version"]["qemu"] == {"micro": 0, "minor": 2, "major": 7}
                assert greeting["capabilities"] == ["oob"]  # and qemu.qmp enabled it
                status = await qmp.execute("query-status")
                assert status == {"running": False, "singlestep": False, "status": "prelaunch"}
                assert await qmp.execute("query-migrate") == {}
                caps = await qmp.execute("query-migrate-capabilities")
                assert isinstance(caps, list)
                assert {"capability": "compress", "state": False} in caps

                compress = {"capability": "compress", "state": True}
                events = {"capability": "events", "state": True}
                await qmp.execute("migrate-set-capabilities", {"capabilities": [compress, events]})
                caps = await qmp.execute("query-migrate-capabilities")
                assert isinstance(caps, list)
                assert compress in caps and events in caps

                new = {"compress-level": 9, "compress-threads": 4, "max-bandwidth": 1 << 30}
                await qmp.execute("migrate-set-parameters", {**new, "tls-creds": None})
                params = await qmp.execute("query-migrate-parameters")
                assert isinstance(params, dict)
                assert {k: params[k] for k in new} == new and params["tls-creds"] == ""

    asyncio.run(run())


def test_errors_reach_the_client_with_qemu_classes(tmp_path: Path) -> None:
    async def run() -> None:
        with served(tmp_path) as path:
            async with client(path) as qmp:
                err = await error_of(qmp, "no-such-command")
                assert (err.class_, err.desc) == (
                    "CommandNotFound",
                    "The command no-such-command has not been found",
                )
                err = await error_of(qmp, "migrate-set-parameters", {"compress-level": "9"})
                assert err.desc == "Parameter 'compress-level' expects uint64"
                err = await error_of(qmp, "migrate", {"uri": 1})
                assert err.desc == "Invalid parameter type for 'uri', expected: string"
                err = await error_of(qmp, "migrate-incoming", {})
                assert err.desc == "Parameter 'uri' is missing"
                err = await error_of(qmp, "stop", {"now": True})
                assert err.desc == "Parameter 'now' is unexpected"
                err = await error_of(qmp, "migrate-set-parameters", {"compress-level": 10})
                assert err.desc == "Parameter 'compress_level' expects a value between 0 and 9"
                err = await error_of(qmp, "qmp_capabilities")
                assert err.class_ == "CommandNotFound"
                assert await qmp.execute("query-status")  # the session goes on

    asyncio.run(run())


def test_stop_cont_events(tmp_path: Path) -> None:
    async def run() -> None:
        with served(tmp_path) as path:
            async with client(path) as qmp:
                with qmp.listener(("STOP", "RESUME")) as listener:
                    await qmp.execute("cont")
                    resume = await next_event(listener)
                    await qmp.execute("stop")
                    stop = await next_event(listener)
                assert (resume["event"], stop["event"]) == ("RESUME", "STOP")
                assert "data" not in stop  # QEMU omits an empty data member
                assert abs(stop["timestamp"]["seconds"] - time.time()) < 60
                assert 0 <= stop["timestamp"]["microseconds"] < 1_000_000

    asyncio.run(run())


def test_human_monitor_command_is_the_hmp(tmp_path: Path) -> None:
    """The same text the HMP prints, with QEMU's CRLF line ends."""
    machine = Machine(PAUSED)
    server = QmpServer(machine, f"unix:{tmp_path}/q.sock,server=on,wait=off")
    server.start()

    def hmp(line: str) -> str:
        out = io.StringIO()
        Monitor(machine, out=out, err=out).execute(line)
        return out.getvalue().replace("\n", "\r\n")

    async def run() -> None:
        async with client(str(tmp_path / "q.sock")) as qmp:
            await qmp.execute("migrate-set-capabilities", {"capabilities": [
                {"capability": "compress", "state": True}]})  # fmt: skip
            for line in (
                "info status",
                "info migrate",
                "info migrate_capabilities",
                "info migrate_parameters",
                "migrate_set_parameter compress-level 10",
                "migrate_set_capability compress maybe",
                "bogus",
                "",
            ):
                text = await qmp.execute("human-monitor-command", {"command-line": line})
                assert text == hmp(line), line

    try:
        asyncio.run(run())
    finally:
        server.close()
        machine.close()


def test_clients_one_after_another_and_at_once(tmp_path: Path) -> None:
    async def run() -> None:
        with served(tmp_path) as path:
            for _ in range(3):
                async with client(path) as qmp:
                    assert await qmp.execute("query-migrate") == {}
            async with client(path) as a, client(path) as b, client(path) as c:
                listeners = [EventListener("RESUME") for _ in range(3)]
                for q, listener in zip((a, b, c), listeners, strict=True):
                    q.register_listener(listener)
                await b.execute("cont")
                for q, listener in zip((a, b, c), listeners, strict=True):
                    assert (await next_event(listener))["event"] == "RESUME"
                    q.remove_listener(listener)
                statuses = await asyncio.gather(*(q.execute("query-status") for q in (a, b, c)))
                assert all(s == statuses[0] for s in statuses)

    asyncio.run(run())


def test_server_survives_clients_that_vanish(tmp_path: Path) -> None:
    with served(tmp_path) as path:
        # Hang up with replies unread, mid-request, and before negotiating.
        flood = RawClient(path)
        flood.send('{"execute": "qmp_capabilities"}' + '{"execute": "query-migrate"}' * 2000)
        flood.close()
        half = RawClient(path)
        half.send('{"execute": "qmp_capabilities"}{"execute": "query-mig')
        half.close()
        RawClient(path).close()
        # Malformed JSON gets QEMU's reply and the session goes on.
        raw = RawClient(path)
        raw.read()
        raw.send('{"execute": "qmp_capabilities"}\n{bad}\n{"execute": "query-status", "id": 5}\n')
        assert raw.read() == {"return": {}}
        assert raw.read() == {
            "error": {"class": "GenericError", "desc": "JSON parse error, invalid keyword 'bad'"}
        }
        reply = raw.read()
        assert reply is not None and reply["id"] == 5
        raw.close()

        async def check() -> None:
            async with client(path) as qmp:
                assert await qmp.execute("query-migrate") == {}

        asyncio.run(check())


def test_tcp_server_and_byte_layout(tmp_path: Path) -> None:
    machine = Machine(PAUSED)
    server = QmpServer(machine, "tcp:127.0.0.1:0,server=on,wait=off")
    server.start()
    try:
        port = int(server.address.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            sock.sendall(b'{"execute": "qmp_capabilities", "id": 1.0}\n')
            data = b""
            while data.count(b"\r\n") < 2:
                data += sock.recv(65536)
        greeting, reply = data.split(b"\r\n")[:2]
        assert json.loads(greeting)["QMP"]["capabilities"] == ["oob"]
        assert reply == b'{"return": {}, "id": 1}'  # QEMU's key order and number format
    finally:
        server.close()
        machine.close()


def test_quit_announces_shutdown_then_hangs_up(tmp_path: Path) -> None:
    quitted = threading.Event()
    machine = Machine(PAUSED)
    server = QmpServer(machine, f"unix:{tmp_path}/q.sock,server=on,wait=off", on_quit=quitted.set)
    server.start()
    try:
        raw = RawClient(str(tmp_path / "q.sock"))
        raw.read()
        raw.send('{"execute": "qmp_capabilities"}{"execute": "quit"}')
        assert raw.read() == {"return": {}}
        shutdown = raw.read()
        assert shutdown is not None
        assert (shutdown["event"], shutdown["data"]) == (
            "SHUTDOWN",
            {"guest": False, "reason": "host-qmp-quit"},
        )
        assert raw.read() == {"return": {}}
        assert raw.read() is None  # hung up
        raw.close()
        assert quitted.wait(TIMEOUT)
    finally:
        server.close()
        machine.close()


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("unix:/tmp/x.sock", "add server=on"),
        ("unix:/tmp/x.sock,server=on,wait=maybe", "Parameter 'wait' expects 'on' or 'off'"),
        ("tcp:127.0.0.1:4444,server=on,telnet=on", "option 'telnet' is not supported"),
        ("stdio,server=on", "'stdio,server=on' is not a valid char driver"),
    ],
)
def test_qmp_spec_errors(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_qmp_spec(text)


def test_qmp_spec_forms() -> None:
    spec = parse_qmp_spec("unix:/tmp/q.sock,server=on,wait=off")
    assert (spec.address.path, spec.wait) == ("/tmp/q.sock", False)
    spec = parse_qmp_spec("tcp:localhost:4444,server,nowait")  # QEMU's legacy spelling
    assert (spec.address.host, spec.address.port, spec.wait) == ("localhost", "4444", False)
    assert parse_qmp_spec("tcp::4444,server=on").wait  # QEMU waits unless told not to


# -- a real migration ---------------------------------------------------------------------------
def _qemu_shapes() -> dict[str, Any]:
    """Key sets of QEMU's own query-migrate answers on the source, by status."""
    shapes: dict[str, Any] = {}
    for rec in load("migration"):
        ret = rec.get("recv", {}).get("return")
        if isinstance(ret, dict) and ret.get("status") in ("active", "completed") and "ram" in ret:
            shapes[ret["status"]] = _shape(ret)
    return shapes


def _shape(info: dict[str, Any]) -> dict[str, Any]:
    return {k: sorted(v) if isinstance(v, dict) else type(v).__name__ for k, v in info.items()}


@contextmanager
def in_process(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Source and destination Machines in this process; yields their QMP socket paths."""
    src_opts = MachineOptions(ram_size=64 << 20)  # idle: OS-like pages, some zero
    dst_opts = MachineOptions(ram_size=64 << 20, incoming="tcp:127.0.0.1:0")
    with served(tmp_path, dst_opts, "dst") as dst, served(tmp_path, src_opts, "src") as src:
        yield src, dst


@contextmanager
def processes(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two ``qemu-hmp -qmp ...`` processes, input piped from /dev/null; both must end at `quit`."""
    paths = (str(tmp_path / "src.sock"), str(tmp_path / "dst.sock"))
    argvs = (["-m", "64"], ["-m", "64", "-incoming", "tcp:127.0.0.1:0"])
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "hmp", *argv, "-qmp", f"unix:{path},server=on,wait=off"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        for argv, path in zip(argvs, paths, strict=True)
    ]
    try:
        wait_listening(paths, procs, TIMEOUT)
        yield paths
        assert [p.wait(TIMEOUT) for p in procs] == [0, 0]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.parametrize("endpoints", [in_process, processes])
def test_compressed_migration_driven_over_qmp(tmp_path: Path, endpoints: Any) -> None:
    """Source and destination, configured, migrated and watched only through QMP."""
    both = {"capabilities": [{"capability": c, "state": True} for c in ("compress", "events")]}

    async def run(src_path: str, dst_path: str) -> None:
        async with client(src_path) as src, client(dst_path) as dst:
            for qmp in (src, dst):
                await qmp.execute("migrate-set-capabilities", both)
            # Slow enough that the polls below also catch the active state.
            params = {"compress-threads": 2, "max-bandwidth": 8 << 20}
            await src.execute("migrate-set-parameters", params)
            where = await dst.execute("query-migrate")
            assert isinstance(where, dict)
            (addr,) = where["socket-address"]
            assert addr["type"] == "inet" and addr["host"] == "127.0.0.1"
            with src.listener() as src_events, dst.listener() as dst_events:
                await src.execute("migrate", {"uri": f"tcp:127.0.0.1:{addr['port']}"})
                deadline = time.monotonic() + TIMEOUT
                shapes = {}
                while True:
                    info = await src.execute("query-migrate")
                    assert isinstance(info, dict)
                    shapes[info["status"]] = _shape(info)
                    if info["status"] in ("completed", "failed") or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.02)
                assert info["status"] == "completed", info
                dst_info = await dst.execute("query-migrate")
                while dst_info.get("status") != "completed" and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                    dst_info = await dst.execute("query-migrate")
                assert dst_info == {"status": "completed"}  # QEMU's destination: no figures
                got_src = [(e["event"], e.get("data")) for e in src_events.history]
                got_dst = [(e["event"], e.get("data")) for e in dst_events.history]

            qemu = _qemu_shapes()
            assert (shapes["active"], shapes["completed"]) == (qemu["active"], qemu["completed"])
            assert info["compression"]["pages"] > 0 and info["ram"]["remaining"] == 0
            assert await src.execute("query-status") == {
                "running": False,
                "singlestep": False,
                "status": "postmigrate",
            }
            assert (await dst.execute("query-status"))["status"] == "running"  # type: ignore[index]

            migration = [d["status"] for e, d in got_src if e == "MIGRATION"]
            assert migration == ["setup", "active", "completed"]
            passes = [d["pass"] for e, d in got_src if e == "MIGRATION_PASS"]
            assert passes and passes == list(range(1, len(passes) + 1))
            assert ("STOP", None) in got_src
            assert [d["status"] for e, d in got_dst if e == "MIGRATION"] == ["active", "completed"]
            assert ("RESUME", None) in got_dst

            if endpoints is processes:
                for qmp in (src, dst):
                    await qmp.execute("quit")
                    with contextlib.suppress(EOFError):  # the hang-up qemu.qmp reports
                        await qmp.disconnect()

    with endpoints(tmp_path) as (src_path, dst_path):
        asyncio.run(run(src_path, dst_path))


def test_wait_on_holds_start_until_a_client_comes(tmp_path: Path) -> None:
    machine = Machine(PAUSED)
    server = QmpServer(machine, f"unix:{tmp_path}/q.sock,server=on")  # QEMU's default: wait
    started = threading.Thread(target=server.start)
    started.start()
    try:
        started.join(0.2)
        assert started.is_alive()
        RawClient(str(tmp_path / "q.sock")).close()
        started.join(TIMEOUT)
        assert not started.is_alive()
    finally:
        server.close()
        machine.close()


def test_cli_reports_a_busy_qmp_address() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        spec = f"tcp:127.0.0.1:{busy.getsockname()[1]},server=on,wait=off"
        proc = subprocess.run(
            [sys.executable, "-m", "hmp", "-m", "16", "-qmp", spec],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    assert proc.returncode == 1
    taken = "Failed to find an available port: Address already in use"  # QEMU 7.2's words
    assert proc.stderr == f"qemu-hmp: -qmp {spec}: {taken}\n"
