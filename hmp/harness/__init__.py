"""Driving endpoints: a qemu-hmp process over pipes, transcripts (format, runner), and the
`record` and `replay` subcommands."""

from hmp.harness.endpoint import Endpoint, EndpointError, EndpointExited, EndpointTimeout, free_port

# `qemu-hmp NAME ...` runs this room's module's main(argv) (hmp/cli.py imports it lazily).
SUBCOMMANDS = {"record": "hmp.harness.record", "replay": "hmp.harness.replay"}

__all__ = [
    "SUBCOMMANDS",
    "Endpoint",
    "EndpointError",
    "EndpointExited",
    "EndpointTimeout",
    "free_port",
]
