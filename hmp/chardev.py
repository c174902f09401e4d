"""The character devices of ``-qmp`` and ``-monitor``, parsed and checked as QEMU 7.2 does.

QEMU's compat spellings (qemu_chr_parse_compat): ``tcp:HOST:PORT,OPTS`` (a host of at most 64
bytes, no brackets: ``[::1]:0`` is host ``[`` and port ``:1]:0``), ``unix:PATH,OPTS``,
``mon:`` before either, ``chardev:ID``, and the other backends by name; OPTS are QemuOpts
checked against QEMU's chardev table. A spelling QEMU refuses gets QEMU's lines, the last of
them ``parse error: VALUE``; one QEMU accepts but qemu-hmp cannot serve gets one clear line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from engine.numbers import strtou64
from engine.transport import HOST_MAX, PORT_MAX, Address, c_bytes, c_text, scan_field
from hmp.qemuopts import OptionError, OptType, flag, parse_opts

S, B, N = OptType.STRING, OptType.BOOL, OptType.NUMBER
# QEMU 7.2's qemu_chardev_opts (Linux build).
CHARDEV_OPTIONS: dict[str, OptType] = {
    **dict.fromkeys(["backend", "path", "host", "port", "fd", "localaddr", "localport"], S),
    "to": N,
    **dict.fromkeys(["ipv4", "ipv6", "wait", "server", "delay", "nodelay"], B),
    "reconnect": N,
    **dict.fromkeys(["telnet", "tn3270"], B),
    **dict.fromkeys(["tls-creds", "tls-authz"], S),
    "websocket": B,
    **dict.fromkeys(["width", "height", "cols", "rows"], N),
    **dict.fromkeys(["mux", "signal"], B),
    "name": S,
    "debug": N,
    "size": OptType.SIZE,
    "chardev": S,
    "append": B,
    "logfile": S,
    **dict.fromkeys(["logappend", "mouse", "clipboard", "tight", "abstract"], B),
}
# Backends QEMU opens by their bare name.
NAMED = ("null", "pty", "msmouse", "wctablet", "braille", "testdev", "stdio", "con:")
# Backends QEMU opens by a prefix (the path or address after it is theirs to check).
PREFIXED = ("COM", "file:", "pipe:", "pty:", "udp:", "/dev/")
# What a socket chardev may ask for that qemu-hmp does not do (each refused by name).
UNSUPPORTED_FLAGS = ("telnet", "tn3270", "websocket", "mux")
UNSUPPORTED_STRINGS = ("fd", "logfile")


@dataclass(frozen=True)
class ServerSocket:
    """A socket chardev in server mode: where to listen, and whether to wait for a client."""

    address: Address
    wait: bool


def _parse_error(text: str, *messages: str) -> OptionError:
    return OptionError(*messages, f"parse error: {text}")


def _host_port(text: str, stops: bytes) -> tuple[str, str, str] | None:
    """``%64[^:]:%32[^STOPS]``, else ``:%32[^STOPS]`` (no host); host, port, what follows."""
    data = c_bytes(text)
    host_end = scan_field(data, 0, b":", HOST_MAX)
    if host_end == 0 or data[host_end : host_end + 1] != b":":
        host_end = 0
        if not data.startswith(b":"):
            return None
    port_end = scan_field(data, host_end + 1, stops, PORT_MAX)
    if port_end == host_end + 1:
        return None
    return c_text(data[:host_end]), c_text(data[host_end + 1 : port_end]), c_text(data[port_end:])


def parse_chardev(text: str) -> tuple[str, dict[str, str]]:
    """The compat spelling → backend and QemuOpts; OptionError with QEMU's lines."""
    body = text.removeprefix("mon:")
    opts = {"mux": "on"} if body != text else {}
    if body in NAMED:
        return body, opts
    if body.startswith("vc"):
        size = r"[0-9]{1,7}C?x[0-9]{1,7}"  # pixels, or characters (C)
        if body[2:3] == ":" and not re.match(size, body[3:]):
            raise _parse_error(text)
        return "vc", opts
    for prefix in ("tcp:", "telnet:", "tn3270:", "websocket:"):
        if body.startswith(prefix):
            return "socket", opts | _inet_chardev(text, body[len(prefix) :], prefix[:-1])
    if body.startswith("udp:") and _host_port(body[4:], b"@,") is None:
        raise _parse_error(text)
    if body.startswith("unix:"):
        return "socket", opts | _opts(text, body[5:], "path")
    for prefix in PREFIXED:
        if body.startswith(prefix):
            return prefix, opts
    raise _parse_error(text, f"'{body}' is not a valid char driver")


def _inet_chardev(text: str, spec: str, protocol: str) -> dict[str, str]:
    found = _host_port(spec, b",")
    if found is None:
        raise _parse_error(text)
    host, port, rest = found
    opts = {"host": host, "port": port}
    if rest.startswith(","):  # a port cut at 32 bytes leaves the rest, options too, unread
        opts |= _opts(text, rest[1:], None)
    if protocol != "tcp":
        opts[protocol] = "on"
    return opts


def monitor_chardev(text: str) -> tuple[str, dict[str, str]]:
    """What ``-monitor`` and ``-qmp`` take: ``chardev:ID`` (never found: qemu-hmp has no
    -chardev) or a compat spelling."""
    if text.startswith("chardev:"):
        raise OptionError(f'chardev "{text[8:]}" not found')
    return parse_chardev(text)


def qmp_chardev(text: str) -> ServerSocket:
    """``-qmp VALUE``: a socket qemu-hmp listens on (stdio is the monitor's)."""
    backend, opts = monitor_chardev(text)
    if backend == "stdio":
        raise OptionError("cannot use stdio by multiple character devices")
    if backend != "socket":
        raise OptionError("qemu-hmp serves QMP on tcp: and unix: sockets only")
    return socket_chardev(opts)


def _opts(text: str, params: str, implied: str | None) -> dict[str, str]:
    try:
        return parse_opts(params, CHARDEV_OPTIONS, implied)
    except OptionError as err:
        raise _parse_error(text, *err.messages) from None


def socket_chardev(opts: dict[str, str]) -> ServerSocket:
    """A socket chardev's checks, in QEMU's order (qemu_chr_parse_socket, then validation);
    a client, or a feature qemu-hmp lacks, is refused with one line of ours."""
    path, host, fd = opts.get("path"), opts.get("host"), opts.get("fd")
    if sum(item is not None for item in (path, host, fd)) > 1:
        raise OptionError("None or one of 'path', 'fd' or 'host' option required.")
    if host is not None and "port" not in opts:
        raise OptionError("chardev: socket: no port given")
    if "delay" in opts and "nodelay" in opts:
        raise OptionError("'delay' and 'nodelay' are mutually exclusive")
    if path is not None and "tls-creds" in opts:
        raise OptionError("'tls_creds' option is incompatible with 'unix' address type")
    if "tls-authz" in opts and "tls-creds" not in opts:
        raise OptionError("'tls_authz' option requires 'tls_creds' option")
    server = flag(opts, "server")
    if server and "reconnect" in opts:
        raise OptionError("'reconnect' option is incompatible with socket in server listen mode")
    if not server and flag(opts, "websocket"):
        raise OptionError("Websocket client is not implemented")
    if not server and "wait" in opts:
        raise OptionError("'wait' option is incompatible with socket in client connect mode")
    if "tls-creds" in opts:  # qemu-hmp has no -object, so never any credentials
        raise OptionError(f"No TLS credentials with id '{opts['tls-creds']}'")
    refused = [name for name in UNSUPPORTED_STRINGS if name in opts]
    refused += [name for name in UNSUPPORTED_FLAGS if flag(opts, name)]
    refused += ["backend"] if opts.get("backend", "socket") != "socket" else []
    refused += ["abstract"] if path is not None and flag(opts, "abstract") else []
    if refused:
        raise OptionError(f"option '{refused[0]}' is not supported by qemu-hmp")
    if path is None and host is None:
        raise OptionError("Unable to parse FD number ")  # QEMU's words when nothing is given
    if not server:
        raise OptionError("qemu-hmp only listens: add server=on")
    if path is not None:
        if not path:
            raise OptionError("qemu-hmp needs a socket path (QEMU would make one up in /tmp)")
        address = Address("unix", path=path)
    else:
        address = _inet(opts)
    return ServerSocket(address, flag(opts, "wait", True))


def _inet(opts: dict[str, str]) -> Address:
    def tristate(name: str) -> bool | None:
        return flag(opts, name) if name in opts else None

    to = strtou64(opts["to"]) & 0xFFFF if "to" in opts else None  # QAPI keeps a uint16
    return Address(
        "tcp", opts["host"], opts["port"], ipv4=tristate("ipv4"), ipv6=tristate("ipv6"), to=to
    )
