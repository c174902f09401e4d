"""The adaptive compression policy (capability ``x-compress-auto``, a qemu-hmp extension).

The classic articles name it as the next step: measure the network and the compressor while
migrating, and pick compression on/off and its level by feedback. Every ``PERIOD_S`` the
source reports what it measured; the policy compares the guest-RAM throughput each choice
would give and keeps the best:

* raw: the link's speed ``B`` (bytes/s on the wire = bytes/s of RAM);
* compressed at the current level: ``min(C, B * r)``, with ``C`` the compressors' measured
  speed (bytes of RAM per second of worker time, times the workers that run at once) and
  ``r`` the measured ratio.

``B`` is max-bandwidth or the emulated link when one caps the stream, else what the socket
really took while it was the bottleneck. While compressing, a link that leaves the workers
idle asks for a higher level (better ratio, slower), busy workers for a lower one. While
sending raw, one chunk in every ``PROBE_EVERY`` is still compressed, so ``C`` and ``r`` stay
measured and the policy can switch back.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace

log = logging.getLogger(__name__)
PERIOD_S = 0.1  # one decision per QEMU bandwidth window
PROBE_EVERY = 16
MARGIN = 1.10  # a choice must be 10% better to replace the current one (no flapping)


@dataclass(frozen=True)
class PolicyInfo:
    """What `info x_compress_policy` shows."""

    enabled: bool
    compress: bool = True
    level: int = 1
    link_bps: float = 0.0  # bytes/s
    link_source: str = "-"
    compress_bps: float = 0.0  # bytes of RAM per second, all workers
    ratio: float = 0.0
    raw_estimate: float = 0.0
    compressed_estimate: float = 0.0
    switches: int = 0


class AdaptivePolicy:
    """Decides, from measurements, whether the next chunk is compressed and at which level."""

    def __init__(self, level: int, max_level: int, workers: int) -> None:
        self._lock = threading.Lock()
        self._info = PolicyInfo(enabled=True, level=level)
        self._level = level  # the configured compress-level
        self._max_level = max_level
        self._workers = workers
        self._chunks = 0
        self._reset_period()

    def _reset_period(self) -> None:
        self._raw_in = 0  # RAM bytes through the compressors this period
        self._raw_out = 0  # their compressed size
        self._busy_s = 0.0  # worker seconds spent on them
        self._sent = 0  # bytes written to the socket
        self._blocked_s = 0.0  # seconds the sender spent inside send calls

    # -- measurements ---------------------------------------------------------------------
    def compressed(self, raw_bytes: int, out_bytes: int, busy_s: float) -> None:
        with self._lock:
            self._raw_in += raw_bytes
            self._raw_out += out_bytes
            self._busy_s += busy_s

    def sent(self, nbytes: int, seconds: float) -> None:
        with self._lock:
            self._sent += nbytes
            self._blocked_s += seconds

    # -- decisions ------------------------------------------------------------------------
    def use_compression(self) -> tuple[bool, int]:
        """For the next chunk: compress?, at which level (probes while sending raw)."""
        with self._lock:
            self._chunks += 1
            info = self._info
            if info.compress or self._chunks % PROBE_EVERY == 0:
                return True, info.level
            return False, info.level

    def update(self, cap_bps: float, cap_source: str) -> None:
        """Close a period: ``cap_bps`` is the configured cap on the stream (0: none)."""
        with self._lock:
            info = self._info
            if self._raw_in and self._busy_s:
                speed = self._raw_in / self._busy_s * self._workers
                ratio = self._raw_in / max(self._raw_out, 1)
            else:
                speed, ratio = info.compress_bps, info.ratio
            if cap_bps:
                link, source = cap_bps, cap_source
            elif self._blocked_s > 0.01:
                link, source = self._sent / self._blocked_s, "measured socket"
            else:
                link, source = info.link_bps, info.link_source
            self._reset_period()
            if not (speed and ratio and link):
                self._info = PolicyInfo(
                    **{**info.__dict__, "link_bps": link, "link_source": source}
                )
                return
            raw = link
            packed = min(speed, link * ratio)
            compress, level = info.compress, info.level
            if compress and raw > packed * MARGIN:
                compress = False
            elif not compress and packed > raw * MARGIN:
                compress = True
            if compress and link * ratio < speed / 2 and level < self._max_level:
                level += 1  # the link is the limit: spend spare CPU on a better ratio
            elif compress and speed < link * ratio and level > 1:
                level -= 1  # the compressors are the limit: go faster
            self._info = PolicyInfo(
                enabled=True,
                compress=compress,
                level=level,
                link_bps=link,
                link_source=source,
                compress_bps=speed,
                ratio=ratio,
                raw_estimate=raw,
                compressed_estimate=packed,
                switches=info.switches + (compress != info.compress or level != info.level),
            )
            if self._info.switches != info.switches:
                log.info(
                    "x-compress-auto: %s level %d (link %.0f B/s from %s, compressors %.0f B/s,"
                    " ratio %.2f)",
                    "compress" if compress else "raw",
                    level,
                    link,
                    source,
                    speed,
                    ratio,
                )

    def stop_and_copy(self, cap_bps: float, cap_source: str) -> None:
        """The stop lifts max-bandwidth and is too short for feedback: levels chosen for a
        capped stream would make the downtime CPU-bound, so restart from the configured
        level and decide on/off for the new cap."""
        with self._lock:
            info = self._info
            if info.level != self._level:
                self._info = replace(info, level=self._level, switches=info.switches + 1)
        self.update(cap_bps, cap_source)

    def info(self) -> PolicyInfo:
        with self._lock:
            return self._info
