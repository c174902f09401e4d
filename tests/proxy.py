"""A loopback proxy that relays one migration connection record by record (engine/wire.py's
framing) and can cut, drop or hold one chosen record, to test each message loss by
construction rather than by timing. It may also carry the migration's further channels (a
postcopy-preempt connection) byte for byte, so that a cut severs every one of them."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from enum import Enum

from engine import wire

UP, DOWN = "up", "down"  # source → destination, destination → source
HOLD_LIMIT_S = 30.0  # a held record is released by the test; this only bounds a broken one


class Action(Enum):
    CUT = "cut"  # close both connections instead of forwarding the record
    DROP = "drop"  # swallow the record, keep relaying the rest
    HOLD = "hold"  # keep the record (a frozen peer) until release(), then forward it


@dataclass(frozen=True)
class Rule:
    direction: str  # UP or DOWN
    kind: wire.Rec
    action: Action
    nth: int = 1  # the rule applies to the nth record of that kind

    def __str__(self) -> str:
        return f"{self.action.value}-{self.kind.name}"


class RecordProxy(threading.Thread):
    """Accepts one connection on 127.0.0.1 and relays it to ``target`` under ``rule``, and
    ``channels`` more (accepted meanwhile), relayed as they are. With ``gate``, the first
    connection reaches ``target`` only once it is set (a frozen peer that has not accepted it:
    the client's connect succeeded, into the backlog)."""

    def __init__(
        self,
        target: str,
        rule: Rule | None = None,
        channels: int = 0,
        gate: threading.Event | None = None,
    ) -> None:
        super().__init__(name="record-proxy", daemon=True)
        host, port = target.removeprefix("tcp:").rsplit(":", 1)
        self.target = (host, int(port))
        self.rule = rule
        self.server = socket.create_server(("127.0.0.1", 0))
        self.uri = f"tcp:127.0.0.1:{self.server.getsockname()[1]}"
        self.reached = threading.Event()  # the rule's record arrived at the proxy
        self._release = threading.Event()
        self.channels = channels
        self.gate = gate
        self._socks: list[socket.socket] = []
        self._socks_lock = threading.Lock()
        self.records: dict[str, list[int]] = {UP: [], DOWN: []}  # kinds forwarded, in order

    def release(self) -> None:
        self._release.set()

    def run(self) -> None:
        with self.server:
            client, _ = self.server.accept()
            if self.gate is not None:
                self.gate.wait(HOLD_LIMIT_S)
            upstream = self._connect(client)
            more = threading.Thread(target=self._accept_channels, daemon=True)
            more.start()
            down = threading.Thread(target=self._relay, args=(upstream, client, DOWN), daemon=True)
            down.start()
            self._relay(client, upstream, UP)
            down.join(HOLD_LIMIT_S)
        more.join(HOLD_LIMIT_S)  # the server closed: a channel that never came ends the wait
        with self._socks_lock:
            for sock in self._socks:
                sock.close()

    def _connect(self, client: socket.socket) -> socket.socket:
        upstream = socket.create_connection(self.target)
        with self._socks_lock:
            self._socks += [client, upstream]
        return upstream

    def _accept_channels(self) -> None:
        try:
            for _ in range(self.channels):
                client, _ = self.server.accept()
                upstream = self._connect(client)
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=_pump, args=(a, b), daemon=True).start()
        except OSError:  # the main connection ended and closed the server
            pass

    @property
    def connections(self) -> int:
        with self._socks_lock:
            return len(self._socks) // 2

    def _relay(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        seen: dict[int, int] = {}
        try:
            if direction == UP:
                dst.sendall(_read(src, wire.HEADER.size))
            while (head := wire.read_exact(src, wire.RECORD.size)) is not None:
                kind, length = wire.RECORD.unpack(head)
                data = bytes(head) + _read(src, length)
                seen[kind] = seen.get(kind, 0) + 1
                rule = self.rule
                if rule and (rule.direction, rule.kind, rule.nth) == (direction, kind, seen[kind]):
                    self.reached.set()
                    if rule.action is Action.CUT:
                        self._cut()
                        return
                    if rule.action is Action.DROP:
                        continue
                    self._release.wait(HOLD_LIMIT_S)
                dst.sendall(data)
                self.records[direction].append(kind)
            dst.shutdown(socket.SHUT_WR)  # pass the end of stream on
        except (OSError, wire.StreamError):  # a peer closed under us: end this direction
            pass

    def cut(self) -> None:
        """Break both connections now, whatever is in flight (a network that fails)."""
        self._cut()

    def _cut(self) -> None:
        with self._socks_lock:
            for sock in self._socks:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:  # its peer had closed it already: nothing left to cut
                    pass


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """Relay one direction of a channel byte for byte, then pass its end on."""
    try:
        while data := src.recv(1 << 16):
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:  # cut, or a peer closed under us: end this direction
        pass


def _read(sock: socket.socket, n: int) -> bytes:
    data = wire.read_exact(sock, n)
    if data is None and n:
        raise OSError("the peer closed mid-record")
    return bytes(data or b"")
