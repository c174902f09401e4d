"""`info migrate` compared with QEMU's by layout: the figures are measurements."""

from __future__ import annotations

import re

NUMBER = re.compile(r"\d+(\.\d+)?")
# Lines QEMU prints only when their figure is not zero; which are depends on timing (a paused
# guest's last pass sends no precopy bytes, an idle one's no downtime bytes, and the dirty
# rate is 0 until a sync period of a second has closed).
OPTIONAL = ("precopy ram", "downtime ram", "postcopy ram", "dirty pages rate")


def layout(info: str) -> list[str]:
    """The lines with their figures masked, without OPTIONAL ones."""
    return [NUMBER.sub("N", x) for x in info.splitlines() if not x.startswith(OPTIONAL)]
