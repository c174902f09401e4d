"""Driving endpoints: a qemu-hmp process over pipes, its figures over QMP (a client that also
drives real QEMU), transcripts (format, runner), and the `record` and `replay` subcommands."""

from hmp.harness.endpoint import (
    Endpoint,
    EndpointError,
    EndpointExited,
    EndpointTimeout,
    free_port,
    resolve_argv,
)
from hmp.harness.qmp_client import (
    MIGRATION_ENDED,
    QmpClient,
    QmpClientError,
    QmpCommandError,
    QmpConnectionError,
    QmpTimeout,
)

# `qemu-hmp NAME ...` runs this room's module's main(argv) (hmp/cli.py imports it lazily).
SUBCOMMANDS = {"record": "hmp.harness.record", "replay": "hmp.harness.replay"}

__all__ = [
    "MIGRATION_ENDED",
    "SUBCOMMANDS",
    "Endpoint",
    "EndpointError",
    "EndpointExited",
    "EndpointTimeout",
    "QmpClient",
    "QmpClientError",
    "QmpCommandError",
    "QmpConnectionError",
    "QmpTimeout",
    "free_port",
    "resolve_argv",
]
