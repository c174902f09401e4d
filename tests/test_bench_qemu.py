"""`bench qemu`: its configs are commands both QEMU (7.2, 11.1) and qemu-hmp take, its parts
behave."""

from __future__ import annotations

import argparse
import io
import os
from pathlib import Path

import pytest

from engine.errors import MigrationError
from engine.machine import Loader, Machine, MachineOptions
from engine.params11 import TABLE_11_1
from hmp.lab import bench, qemu_compare
from hmp.lab.qemu_compare import CONFIGS, CONFIGS_11, LINKS, Config, Run
from hmp.monitor import Monitor

CASES = Path(__file__).parent / "data" / "qemu-7.2" / "cases"
CASES_11 = Path(__file__).parent / "data" / "qemu-11.1" / "cases"
GUEST_ARGV = "-m 128 -S"


def case_text(config: Config, port: int = 4444) -> str:
    """The oracle case of a config: its commands at one QEMU (both sides' but `migrate`)."""
    src = config.commands(port, source=True)[:-1]
    dst = [c for c in config.commands(port, source=False) if c not in src]
    argv = GUEST_ARGV + (" -incoming defer" if config.defer else "")
    lines = [argv, *src, *dst, "info migrate_capabilities", "info migrate_parameters"]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("name", [n for n, c in CONFIGS.items() if c.qemu])
def test_each_shared_config_is_a_recorded_qemu_case(name: str) -> None:
    # The monitor oracle replays the case against qemu-hmp; QEMU 7.2 took it silently.
    case = CASES / f"bench_{name.replace('-', '_')}.cmds"
    assert case.read_text() == case_text(CONFIGS[name])
    recorded = (case.parent.parent / f"{case.stem}.txt").read_text()
    assert "(qemu) migrate_set_parameter max-bandwidth 100G\n(qemu) " in recorded  # silent


@pytest.mark.parametrize("name", list(CONFIGS_11))
def test_each_11_1_config_is_a_recorded_qemu_11_1_case(name: str) -> None:
    # test_monitor_oracle11 replays the case against qemu-hmp --qemu 11.1; QEMU took it silently.
    case = CASES_11 / f"bench_{name.replace('-', '_')}.cmds"
    assert case.read_text() == case_text(CONFIGS_11[name], port=0)
    recorded = (case.parent.parent / f"{case.stem}.txt").read_text()
    assert "(qemu) migrate_set_parameter max-bandwidth 100G\n(qemu) " in recorded  # silent


def test_source_commands_end_with_the_uncapped_migrate() -> None:
    cmds = CONFIGS["compress"].commands(5555, source=True)
    assert cmds[-2:] == ["migrate_set_parameter max-bandwidth 100G", "migrate tcp:127.0.0.1:5555"]
    assert "migrate_set_parameter decompress-threads 1" in CONFIGS["compress"].commands(0, False)
    assert not any("migrate " in c for c in CONFIGS["compress"].commands(0, False))


def test_names_option_takes_known_names_only() -> None:
    parse = bench._names(CONFIGS)
    assert parse("plain,compress") == ["plain", "compress"]
    with pytest.raises(argparse.ArgumentTypeError, match="nope"):
        parse("plain,nope")
    with pytest.raises(argparse.ArgumentTypeError):
        parse(",")


def test_runs_must_be_positive() -> None:
    assert bench._positive("2") == 2
    for bad in ("0", "-1", "x"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected a whole number"):
            bench._positive(bad)


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["xbzrle", "--qemu", "11.1"], "--qemu 11.1: only `bench qemu` compares"),
        (
            ["qemu", "--qemu", "11.1", "--configs", "compress"],
            "'compress': expected some of plain,",
        ),
        (["qemu", "--configs", "multifd-zstd-legacy"], "expected some of plain,multifd-none,"),
    ],
)
def test_qemu_option_and_its_configs(
    argv: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        bench.main(argv)
    assert error in capsys.readouterr().err


def test_shaped_link_needs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(qemu_compare.LinkUnavailable, match="root"):
        with qemu_compare.shaped_link(LINKS["1gbit"]):
            pass
    with qemu_compare.shaped_link(LINKS["loopback"]) as prefix:
        assert prefix == []


def test_raw_copy_of_a_size_that_is_no_multiple_of_the_send(tmp_path: Path) -> None:
    # 3 MiB + 5 bytes from a 1 MiB + 3 byte source: wraps, ends exactly (a short count hung).
    data = memoryview(bytes(range(256)) * 4096 + b"abc")
    assert bench.raw_socket_seconds(data, True, (3 << 20) + 5) > 0


def run(ms: float, src_kib: int = 1024, status: str = "completed") -> Run:
    return Run({"status": status, "total-time": ms, "ram": {"transferred": 1e6}}, {
        "src": src_kib, "dst": 2048})  # fmt: skip


def test_latency_and_rss_figures() -> None:
    report = bench.Report(out=io.StringIO())
    times = [float(i) for i in range(1, 101)]  # p99 of 1..100 is 99
    bench._latency_and_rss(report, "x", times, [run(1), run(2, src_kib=700 << 10)])
    checks = {name: (value, ok) for name, value, _t, ok in report.checks}
    assert checks["info migrate p99 during x (ms)"] == (99.0, False)
    assert checks["src peak RSS over guest (MiB)"] == (700 - qemu_compare.GUEST_MIB, False)
    assert checks["dst peak RSS over guest (MiB)"] == (2 - qemu_compare.GUEST_MIB, True)


def test_side_figures_and_cells() -> None:
    runs = [run(300), run(100), run(200, status="failed")]
    runs[0].steal, runs[1].steal = 12.4, 0.0  # the third's host could not be read
    side = bench.Side(runs, [50.0, 60.0, 70.0])
    assert (side.median, side.fastest, side.floor) == (200, 100, 60)
    assert side.cell() == "300 (50, 12%) 100 (60, 0%) 200 (70, ?) failed"


def test_plain_loopback_targets() -> None:
    report = bench.Report(out=io.StringIO())
    qemu, ours = bench.Side([run(168)], [100.0]), bench.Side([run(150)], [100.0])
    bench._link_checks(report, LINKS["loopback"], {"plain": (qemu, ours)})
    checks = {name: ok for name, _v, _t, ok in report.checks}
    assert checks == {
        "loopback plain: ours median / QEMU fastest": True,
        "loopback plain: ours median / raw copy": True,
        "loopback plain: ours / QEMU median": False,
    }


def test_the_link_targets_take_our_fastest_config_whose_runs_all_completed() -> None:
    report = bench.Report(out=io.StringIO())
    qemu = bench.Side([run(1000)], [900.0])
    broken = bench.Side([run(10, status="failed")], [10.0])  # fastest, but not a migration
    zstd = bench.Side([run(790)], [750.0])
    bench._link_checks(report, LINKS["1gbit"], {"a": (qemu, broken), "b": (qemu, zstd)})
    checks = {name: (value, ok) for name, value, _t, ok in report.checks}
    assert checks == {
        "1gbit: our best / QEMU's best config": (0.79, True),
        "1gbit: our best config / its floor": (790 / 750, True),
    }


def test_a_loaded_image_lands_whole_and_one_byte_too_many_is_refused(tmp_path: Path) -> None:
    image = tmp_path / "image.bin"
    data = os.urandom(3 * 4096 + 13)
    image.write_bytes(data)
    machine = Machine(MachineOptions(ram_size=1 << 20, loaders=(Loader(str(image), 0x2000),)))
    try:
        assert bytes(machine.ram.buf[0x2000 : 0x2000 + len(data)]) == data
        assert bytes(machine.ram.buf[0x2000 + len(data) : 0x6000]) == bytes(
            0x6000 - 0x2000 - len(data)
        )
    finally:
        machine.close()
    image.write_bytes(bytes(1 << 20) + b"x")
    with pytest.raises(MigrationError, match="does not fit in guest RAM"):
        Machine(MachineOptions(ram_size=1 << 20, loaders=(Loader(str(image), 0),)))


@pytest.mark.parametrize("name", [n for n, c in CONFIGS.items() if not c.qemu])
def test_each_config_of_ours_is_taken_silently_by_our_monitor(name: str) -> None:
    for source in (True, False):
        machine = Machine(MachineOptions(ram_size=8 << 20, start_paused=True))
        out, err = io.StringIO(), io.StringIO()
        monitor = Monitor(machine, out, err)
        try:
            commands = CONFIGS[name].commands(4444, source)
            for command in commands[:-1] if source else commands:
                monitor.execute(command)
            assert (out.getvalue(), err.getvalue()) == ("", "")
        finally:
            machine.close()


@pytest.mark.parametrize("name", list(CONFIGS_11))
def test_each_11_1_config_is_taken_silently_by_our_11_1_monitor(name: str) -> None:
    """Both sides' commands but `migrate`, the destination deferred as QEMU 11.1 needs."""
    config = CONFIGS_11[name]
    assert (config.release, config.incoming(4444)) == (
        "11.1",
        "defer" if config.defer else "tcp:127.0.0.1:4444",
    )
    for source in (True, False):
        opts = MachineOptions(
            ram_size=8 << 20,
            start_paused=True,
            incoming=None if source else config.incoming(0),
            config_table=TABLE_11_1,
        )
        machine = Machine(opts)
        out, err = io.StringIO(), io.StringIO()
        monitor = Monitor(machine, out, err)
        try:
            commands = config.commands(0, source)
            for command in commands[:-1] if source else commands:
                monitor.execute(command)
            assert (out.getvalue(), err.getvalue()) == ("", "")
            if not source and config.defer:
                assert machine.query_migrate().socket_address  # listening
        finally:
            machine.close()


def test_an_11_1_workdir_must_be_where_its_chroot_sees(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sees only /tmp/qemu11"):
        qemu_compare.compare(tmp_path, runs=1, config=CONFIGS_11["plain"])
