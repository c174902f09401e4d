"""Addresses and command-line values at their limits: QEMU's rules, QEMU's texts, no traceback.

What the QEMU 7.2 oracle (uri_migrate, uri_incoming, cli) cannot show without binding a
port someone else may hold: how a port is resolved, the listener's fallbacks, and the bounds
on our own options.
"""

from __future__ import annotations

import io
import json
import os
import socket
import threading
from pathlib import Path

import pytest

from engine.errors import MigrationError
from engine.guest import GuestRam
from engine.machine import Loader, Machine, MachineOptions
from engine.transport import Address, AddressError, Listener, listen, parse_uri, resolve
from engine.workload import WorkloadSpec
from hmp.cli import UsageError, parse_argv
from hmp.monitor.session import Monitor
from hmp.qmp.qapi import socket_address
from hmp.qmp.server import QmpServer

LOOPBACK = "127.0.0.1"
TIMEOUT = 10.0


def port_of(uri: str, *, listening: bool = False) -> int:
    (_family, _proto, sockaddr), *_ = resolve(parse_uri(uri, incoming=True), listening=listening)
    return int(sockaddr[1])


@pytest.mark.parametrize(
    ("port", "resolved"),
    [("1", 1), ("65537", 1), ("4294967297", 1), ("+1", 1), ("tcpmux", 1), ("65536", 0)],
)
def test_the_port_goes_to_getaddrinfo_as_qemu_passes_it(port: str, resolved: int) -> None:
    """glibc wraps numbers above 65535 and knows /etc/services; int() knew neither."""
    assert port_of(f"tcp:{LOOPBACK}:{port}") == resolved


@pytest.mark.parametrize("port", ["99999999999999999999", "²", "٣", "0x10", "-1", "2147483648"])
def test_what_getaddrinfo_refuses_is_qemus_error(port: str) -> None:
    """These were an OverflowError, a ValueError, and (٣) a connection to port 3."""
    with pytest.raises(AddressError) as err:
        port_of(f"tcp:{LOOPBACK}:{port}")
    expected = f"address resolution failed for {LOOPBACK}:{port}: Servname not supported"
    assert err.value.desc == f"{expected} for ai_socktype"


def test_a_monitor_migrate_to_a_huge_port_is_no_internal_error() -> None:
    reports: list[str] = []
    machine = Machine(MachineOptions(ram_size=8 << 20), notify=reports.append)
    out = io.StringIO()
    try:
        Monitor(machine, out, io.StringIO()).execute(f"migrate -d tcp:{LOOPBACK}:{'9' * 20}")
    finally:
        machine.close()
    reason = f"address resolution failed for {LOOPBACK}:{'9' * 20}: Servname not supported"
    assert (out.getvalue(), reports) == ("", [f"{reason} for ai_socktype"])


def test_qmp_on_a_port_above_65535_serves(tmp_path: Path) -> None:
    """-qmp tcp:HOST:65536 is port 0 for glibc, as for QEMU: any free port (was OverflowError)."""
    machine = Machine(MachineOptions(ram_size=8 << 20))
    server = QmpServer(machine, f"tcp:{LOOPBACK}:65536,server=on,wait=off")
    try:
        server.start()
        host, _, port = server.address.removeprefix("tcp:").rpartition(":")
        with socket.create_connection((host, int(port)), TIMEOUT) as sock:
            greeting = json.loads(sock.makefile().readline())
        assert "QMP" in greeting
    finally:
        server.close()
        machine.close()


def test_a_taken_port_is_qemus_error_and_to_extends_the_search() -> None:
    with socket.socket() as busy:
        busy.bind((LOOPBACK, 0))
        busy.listen()
        port = busy.getsockname()[1]
        for uri in (f"tcp:{LOOPBACK}:{port}", f"tcp:{LOOPBACK}:{port},to={port}"):
            with pytest.raises(AddressError) as err:
                listen(parse_uri(uri, incoming=True))
            assert err.value.desc == "Failed to find an available port: Address already in use"
        # to= wraps to a uint16 as in QEMU: 65536 + port is port itself again
        with pytest.raises(AddressError):
            listen(parse_uri(f"tcp:{LOOPBACK}:{port},to={65536 + port}", incoming=True))


def test_keep_alive_reaches_the_socket() -> None:
    sock = listen(parse_uri(f"tcp:{LOOPBACK}:0,keep-alive", incoming=True))
    with sock:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1


def test_the_listener_reports_the_bound_address() -> None:
    listener = Listener(parse_uri(f"tcp:{LOOPBACK}:0,to=9", incoming=True))
    try:
        addr = listener.addr
        assert (addr.host, addr.port != "0", addr.to) == (LOOPBACK, True, None)
        assert addr.port.isdigit()
    finally:
        listener.close()


def test_socket_address_of_an_ipv6_listener() -> None:
    assert socket_address("tcp:::1:4444") == {
        "type": "inet",
        "host": "::1",
        "port": "4444",
        "ipv6": True,
    }


def test_unix_path_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """QEMU's check and hint; 108 bytes too, since Python's socket module needs the NUL."""
    long_path = "/" + "a" * 107
    with pytest.raises(AddressError) as err:
        listen(Address("unix", path=long_path))
    assert err.value.report() == (
        f"UNIX socket path '{long_path}' is too long\nPath must be less than 108 bytes"
    )
    monkeypatch.chdir(tmp_path)  # a relative path of 107 bytes, however long tmp_path is
    listen(Address("unix", path="s" * 107)).close()
    assert (tmp_path / ("s" * 107)).exists()


def test_a_stale_socket_is_replaced_but_never_a_file(tmp_path: Path) -> None:
    path = tmp_path / "x.sock"
    stale = listen(Address("unix", path=str(path)))
    stale.close()
    listen(Address("unix", path=str(path))).close()  # the socket file left behind is replaced
    path.unlink()
    path.write_text("precious")
    with pytest.raises(AddressError) as err:
        listen(Address("unix", path=str(path)))
    assert err.value.desc == f"Failed to bind socket to {path}: Address already in use"
    assert path.read_text() == "precious"


def writers() -> int:
    return sum(t.name == "vcpu-writer" and t.is_alive() for t in threading.enumerate())


def test_a_failed_incoming_stops_the_guest_writer() -> None:
    opts = MachineOptions(ram_size=8 << 20, incoming=f"tcp:{LOOPBACK}:²", workload="idle,rate=10")
    before = writers()
    with pytest.raises(AddressError):
        Machine(opts)
    assert writers() == before


def test_a_loader_reads_no_more_than_fits(tmp_path: Path) -> None:
    """A pipe that never ends (like /dev/zero) was read forever; now one byte too many does."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    ram = 8 << 20

    def feed() -> None:
        with open(fifo, "wb") as f:
            f.write(bytes(ram + 1))
            released.wait(TIMEOUT)  # keep the pipe open: no end of file

    released = threading.Event()
    feeder = threading.Thread(target=feed)
    feeder.start()
    outcome: list[BaseException] = []

    def boot() -> None:
        try:
            Machine(MachineOptions(ram_size=ram, loaders=(Loader(str(fifo), 0),))).close()
        except MigrationError as exc:
            outcome.append(exc)

    booting = threading.Thread(target=boot)
    booting.start()
    booting.join(TIMEOUT)
    finished = not booting.is_alive()
    released.set()
    feeder.join(TIMEOUT)
    booting.join(TIMEOUT)
    assert finished and "does not fit in guest RAM" in str(outcome[0])


@pytest.mark.parametrize("size", [1 << 63, 1 << 56])
def test_ram_beyond_the_address_space_is_qemus_error(size: int) -> None:
    with pytest.raises(MigrationError) as err:
        GuestRam(size)
    assert err.value.desc == "cannot set up guest memory 'ram': Cannot allocate memory"


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ("random-writer,rate=٣", "workload rate '٣' is not an integer"),
        ("random-writer,rate=1_000", "workload rate '1_000' is not an integer"),
        ("random-writer,rate=99999999999999999999", "must be at most 16777216 pages/s"),
        ("idle,rate=1,wss=1.5e999", "invalid size '1.5e999'"),
        ("idle,rate=1,wss=٣M", "invalid size '٣M'"),
    ],
)
def test_workload_values_are_ascii_and_bounded(spec: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        WorkloadSpec.parse(spec)


def test_seed_takes_ascii_digits_only() -> None:
    with pytest.raises(UsageError, match="expected a non-negative integer"):
        parse_argv(["--seed", "²"])
