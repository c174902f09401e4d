"""Command line: QEMU's spellings for what an endpoint is, plus a few options of our own.

``qemu-hmp [-m SIZE] [-incoming URI|defer] [-name NAME] [-S] [-device loader,...]
[--workload NAME] [--seed N]``, or ``qemu-hmp SUBCOMMAND ...`` for the tools registered in
SUBCOMMANDS. Options may be spelled with one dash or two, as QEMU allows.
"""

from __future__ import annotations

import importlib
import math
import re
import sys
import threading
from collections.abc import Callable

from engine.errors import MigrationError
from engine.machine import Loader, Machine, MachineOptions
from engine.params import UINT64_MAX
from engine.transport import AddressError
from engine.workload import PROFILES, WorkloadSpec
from hmp import harness, lab
from hmp.exits import ProcessEnd, deferred, run_as_process, serve_until_quit
from hmp.log import extract_log_option, start_log
from hmp.monitor import (
    DIALECTS,
    QEMU_VERSION,
    Monitor,
    MonitorSockets,
    extract_monitor_options,
    package_version,
    run_batch,
    strtosz,
    strtou64,
)
from hmp.qemuopts import OptionError, OptType, parse_opts
from hmp.qmp import QmpFrontend, extract_qmp_options
from hmp.shell import USAGE as SHELL_USAGE
from hmp.shell import ShellOptions, run_connect, run_pair, run_repl

MiB = 1024 * 1024
DEFAULT_RAM = 128 * MiB

# QEMU options that describe hardware qemu-hmp does not model: accepted so pasted QEMU command
# lines work, and otherwise ignored (the value, if any, is skipped).
IGNORED_WITH_VALUE = frozenset({"-machine", "-M", "-display", "-accel", "-cpu", "-vga"})
IGNORED_FLAGS = frozenset({"-nodefaults", "-nographic", "-enable-kvm", "-no-user-config"})

USAGE = """\
usage: qemu-hmp [options]            a QEMU 7.2 monitor on stdin/stdout
       qemu-hmp SUBCOMMAND [args]    one of: {subcommands}

QEMU options:
  -m SIZE                 guest RAM (default 128M; a bare number is MiB; suffixes K M G T)
  -incoming URI|defer     be a migration destination (tcp:HOST:PORT, unix:PATH,
                          exec:COMMAND: restore what COMMAND prints)
  -name NAME              the VM name shown by `info name`
  -uuid UUID              the VM UUID (`info uuid`; checked by validate-uuid)
  -S                      start with the vCPUs paused
  -smp [cpus=]N[,maxcpus=N,sockets=N,...]
                          the vCPUs (default 1): each runs the workload, the
                          postcopy vcpu blocktime lists each
  -mem-prealloc           allocate all guest RAM at start (no page faults while migrating)
  -device loader,file=PATH,addr=ADDR,force-raw=on
                          copy a file into guest RAM at ADDR (repeatable)
  -monitor stdio | none | unix:PATH,server=on,wait=off | tcp:HOST:PORT,server=on,wait=off
          | telnet:HOST:PORT,server=on,wait=off
                          where the monitor is (repeatable; default stdio; see
                          hmp/monitor/socket.py)
  -D FILE                 log to FILE: unexpected errors with their tracebacks, migration
                          state changes, the adaptive policy's decisions (default: no log)
  -qmp unix:PATH,server=on,wait=off | tcp:HOST:PORT,server=on,wait=off
                          serve QMP there too (repeatable; see hmp/qmp/)
  -machine, -M, -display, -accel, -cpu, -vga, -nodefaults, -nographic,
  -enable-kvm, -no-user-config
                          accepted and ignored
qemu-hmp options:
  --workload NAME[,rate=PAGES_PER_S][,wss=SIZE]
                          what the guest does: {workloads}
                          (default idle; zero, the images alone, with -device
                          loader); idle and random-writer take a write rate
                          and a working set
  --seed N                seed of the guest's content and writes (default 0)
  --qemu RELEASE          the QEMU release whose monitor and QMP to speak: {releases}
                          (default 7.2)
  -h, --help              this text
  -version, --version     the version
"""


# The QemuOpts of -m and -name in QEMU 7.2 (the first item may leave its name out).
MEMORY_OPTIONS = {"size": OptType.SIZE, "slots": OptType.NUMBER, "maxmem": OptType.SIZE}
SMP_OPTIONS = ("cpus", "maxcpus", "sockets", "dies", "clusters", "cores", "threads")
MAX_CPUS = 255  # QEMU 7.2's pc machines
NAME_OPTIONS = {"guest": OptType.STRING, "process": OptType.STRING, "debug-threads": OptType.BOOL}


# qemu_uuid_parse: exactly 8-4-4-4-12 hex digits, either case.
UUID = re.compile(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")


class UsageError(OptionError):
    """A bad command line: one message, printed after ``qemu-hmp: ``."""


def _lazy(module: str) -> Callable[[list[str]], int]:
    """``module.main``, imported only when that subcommand runs (keeps the monitor's start fast)."""

    def run(argv: list[str]) -> int:
        main: Callable[[list[str]], int] = importlib.import_module(module).main
        return main(argv)

    return run


# `qemu-hmp NAME ...` runs SUBCOMMANDS[NAME](rest of argv) and exits with its status.
SUBCOMMANDS: dict[str, Callable[[list[str]], int]] = {
    name: _lazy(module) for name, module in {**lab.SUBCOMMANDS, **harness.SUBCOMMANDS}.items()
}


def _options(option: str, text: str, table: dict[str, OptType], implied: str) -> dict[str, str]:
    try:
        return parse_opts(text, table, implied)
    except OptionError as err:
        raise err.located(f"{option} {text}") from None


def parse_size_mib(text: str) -> int:
    """QEMU's ``-m [size=]SIZE[,slots=N,maxmem=SIZE]``: a bare number is MiB; 0 the default."""
    opts = _options("-m", text, MEMORY_OPTIONS, "size")
    size = strtosz(opts.get("size", "0"))
    if opts.get("size", "")[-1:].isdigit():  # QEMU's legacy unit for a bare number
        size *= MiB
        if size > UINT64_MAX:
            raise UsageError("Parameter 'memory.size' expects size")
    # QEMU rounds the RAM size up to 8 KiB, in 64 bits (so the largest sizes wrap to 0).
    size = (-(-size // 8192) * 8192) % 2**64 or DEFAULT_RAM
    _check_maxmem(opts, size)
    return size


def parse_smp(text: str) -> int:
    """QEMU 7.2's ``-smp [cpus=]N[,maxcpus=N][,sockets=N][,dies=N][,clusters=N][,cores=N]
    [,threads=N]``: the vCPUs to run; without cpus, maxcpus, else the topology's product
    (each member 1 when left out). A pc machine has at most 255."""
    values: dict[str, int] = {}
    for i, item in enumerate(text.split(",") if text else []):
        name, sep, number = item.partition("=")
        if not sep and i == 0:
            name, number = "cpus", item
        elif not sep:  # QemuOpts reads it as a flag, which -smp does not take
            raise UsageError(f"-smp {text}: Invalid parameter '{item}'")
        if name not in SMP_OPTIONS:
            raise UsageError(f"Parameter 'smp.{name}' is unexpected")
        if not (number.isascii() and number.isdigit()):
            raise UsageError(f"Parameter 'smp.{name}' expects integer")
        values[name] = int(number)
    cpus = values.get("cpus") or values.get("maxcpus")
    if not cpus:
        cpus = math.prod(values.get(name) or 1 for name in SMP_OPTIONS[2:])
    if cpus > MAX_CPUS:
        raise UsageError(
            f"Invalid SMP CPUs {cpus}. The max CPUs supported by machine 'pc-i440fx-7.2' is "
            f"{MAX_CPUS}"
        )
    return cpus


def _check_maxmem(opts: dict[str, str], size: int) -> None:
    """QEMU's checks of maxmem and slots (qemu-hmp has no hotplug, so they go no further)."""
    if "maxmem" not in opts:
        if "slots" in opts:
            raise UsageError("slots specified but no max-size")
        return
    maxmem, slots = strtosz(opts["maxmem"]), strtou64(opts.get("slots", "0"))
    prefix = "invalid value of maxmem: "
    if maxmem < size:
        raise UsageError(
            f"{prefix}maximum memory size ({maxmem:#x}) must be at least the initial memory "
            f"size ({size:#x})"
        )
    if slots and maxmem == size:
        raise UsageError(
            f"{prefix}memory slots were specified but maximum memory size ({maxmem:#x}) is "
            f"equal to the initial memory size ({size:#x})"
        )


def _parse_loader(spec: str) -> Loader:
    driver, *props = spec.split(",")
    if driver != "loader":
        raise UsageError(f"-device {spec}: only the loader device is supported")
    values = dict(prop.partition("=")[::2] for prop in props)
    unknown = set(values) - {"file", "addr", "force-raw"}
    if unknown or "file" not in values or "addr" not in values:
        raise UsageError(f"-device {spec}: expected loader,file=PATH,addr=ADDR,force-raw=on")
    if values.get("force-raw") != "on":
        raise UsageError(f"-device {spec}: only raw images are supported (add force-raw=on)")
    try:
        addr = strtou64(values["addr"])
    except ValueError:
        raise UsageError(f"-device {spec}: bad addr '{values['addr']}'") from None
    return Loader(values["file"], addr)


def parse_argv(argv: list[str]) -> MachineOptions | None:
    """``None`` when the command line asked for help or the version (already printed)."""
    opts: dict[str, object] = {}
    loaders: list[Loader] = []
    args = iter(argv)

    def value(option: str) -> str:
        try:
            return next(args)
        except StopIteration:
            raise UsageError(f"{option}: requires an argument") from None

    for arg in args:
        option = arg[1:] if arg.startswith("--") else arg
        if option in ("-h", "-help"):
            subcommands = ", ".join(SUBCOMMANDS)
            sys.stdout.write(
                USAGE.format(
                    subcommands=subcommands,
                    workloads=", ".join(PROFILES),
                    releases=", ".join(DIALECTS),
                )
            )
            sys.stdout.write(SHELL_USAGE)
            return None
        if option == "-version":
            sys.stdout.write(f"qemu-hmp {package_version()} (QEMU {QEMU_VERSION} monitor)\n")
            return None
        if option == "-m":
            opts["ram_size"] = parse_size_mib(value(arg))
        elif option == "-incoming":
            opts["incoming"] = value(arg)
        elif option == "-name":
            # QEMU also takes "guest=NAME,debug-threads=on"; only the name matters here.
            name = value(arg)
            opts["name"] = _options(arg, name, NAME_OPTIONS, "guest").get("guest")
        elif option == "-uuid":
            text = value(arg)
            if not UUID.fullmatch(text):
                raise UsageError(f"{arg} {text}: failed to parse UUID string: wrong format")
            opts["uuid"] = text.lower()  # QEMU prints it in lower case
        elif option == "-smp":
            opts["smp"] = parse_smp(value(arg))
        elif option == "-S":
            opts["start_paused"] = True
        elif option == "-mem-prealloc":
            opts["prealloc"] = True
        elif option == "-device":
            loaders.append(_parse_loader(value(arg)))
        elif option == "-workload":
            workload = value(arg)
            if workload.split(",")[0] not in PROFILES:
                raise UsageError(f"{arg} {workload}: expected one of {', '.join(PROFILES)}")
            try:  # options such as random-writer,rate=25000,wss=32M
                WorkloadSpec.parse(workload)
            except ValueError as err:
                raise UsageError(f"{arg} {workload}: {err}") from None
            opts["workload"] = workload
        elif option == "-seed":
            seed = value(arg)
            if not (seed.isascii() and seed.isdigit()):
                raise UsageError(f"{arg} {seed}: expected a non-negative integer")
            opts["seed"] = int(seed)
        elif option == "-qemu":
            release = value(arg)
            if release not in DIALECTS:
                raise UsageError(f"{arg} {release}: expected one of {', '.join(DIALECTS)}")
            opts["config_table"] = DIALECTS[release].table
        elif option in IGNORED_WITH_VALUE:
            value(arg)
        elif option in IGNORED_FLAGS:
            pass
        elif arg.startswith("-"):
            raise UsageError(f"{arg}: invalid option")
        else:
            raise UsageError(f"{arg}: disk images are not supported")
    return MachineOptions(loaders=tuple(loaders), **opts)  # type: ignore[arg-type]


class Notices:
    """What the machine's threads report (a failed incoming load...) goes to the monitor's
    stderr; one that comes before the monitor exists (an `-incoming exec:` stream can fail
    while the machine is still being built) waits for it rather than being lost."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._early: list[str] | None = []  # None once attached
        self._mon: Monitor | None = None

    def report(self, message: str) -> None:
        with self._lock:
            if self._early is not None:
                self._early.append(message)
                return
        assert self._mon is not None
        self._mon.error_report(message)

    def attach(self, mon: Monitor) -> None:
        with self._lock:  # in order: nothing reported meanwhile overtakes the early ones
            self._mon, early, self._early = mon, self._early or [], None
            for message in early:
                mon.error_report(message)


def _fail(err: OptionError) -> int:
    """Print QEMU's messages about the command line, each after ``qemu-hmp: ``; status 1."""
    sys.stderr.write("".join(f"qemu-hmp: {message}\n" for message in err.messages))
    return 1


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the process itself: signals and broken stdio end it cleanly
        return run_as_process(main, sys.argv[1:])
    if argv and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]](argv[1:])
    shell, argv = ShellOptions.extract(argv)
    if shell.connect is not None:
        if argv:  # the QEMU it connects to has its own command line
            return _fail(UsageError(f"--connect: unexpected argument {argv[0]}"))
        return run_connect(shell.connect, shell, interactive=sys.stdin.isatty())
    try:
        qmp_specs, argv = extract_qmp_options(argv)  # -qmp: hmp/qmp/frontend.py
        log_file, argv = extract_log_option(argv)
        start_log(log_file)
        monitor_specs, argv = extract_monitor_options(argv)  # -monitor: hmp/monitor/socket.py
        opts = parse_argv(argv)
    except OptionError as err:
        return _fail(err)
    except ValueError as err:  # -D and -monitor: one line each
        return _fail(OptionError(str(err)))
    if opts is None:
        return 0
    notices = Notices()
    end = ProcessEnd()  # what a `quit` typed into QMP or a monitor socket releases
    try:  # from here a signal or a quit, whenever it comes, releases all that exists
        # A signal raised inside a constructor that starts threads (or inside
        # Thread.start) would lose what it started: it waits until startup is over, but
        # for the waits for a first client (wait=on), which it may end.
        with deferred():
            try:
                machine = Machine(opts, notify=notices.report)
            except AddressError as err:  # QEMU names the option whose address failed
                return _fail(OptionError(err.report()).located(f"-incoming {opts.incoming}"))
            except MigrationError as err:
                return _fail(OptionError(err.report()))
            except OSError as err:
                return _fail(OptionError(err.strerror or str(err)))
            end.on_end(machine.close)
            mon = Monitor(machine)
            notices.attach(mon)
            try:
                qmp = QmpFrontend(machine, qmp_specs, end)
                sockets = MonitorSockets(machine, monitor_specs, end)
            except OptionError as err:
                return _fail(err)
        stdio = any(spec.stdio for spec in monitor_specs)
        return _run_monitor(mon, shell, stdio, others=bool(qmp.servers or sockets.servers))
    finally:
        end.release()


def _run_monitor(mon: Monitor, shell: ShellOptions, stdio: bool, *, others: bool) -> int:
    """The monitor on stdio if there is one; then, like QEMU, outlive the end of its input
    while other front ends (QMP, monitor sockets) may still quit, or forever without any."""
    status = 0
    if stdio and shell.pair:
        return run_pair(mon, shell)
    if stdio and sys.stdin.isatty():
        return run_repl(mon, history=shell.history)
    if stdio:
        status = run_batch(mon, sys.stdin)
    if not mon.quit_requested and (others or not stdio):
        serve_until_quit()
    return status
