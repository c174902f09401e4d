"""The QMP server: `-qmp` options, the server and its command table, the QAPI visitors that
turn engine snapshots into QEMU's JSON, and the JSON stream reader."""

from hmp.qmp.frontend import QmpFrontend, extract_qmp_options

__all__ = ["QmpFrontend", "extract_qmp_options"]
