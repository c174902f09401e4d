"""Measuring and teaching: the classic experiment's cases, one measured two-process migration,
`demo`, `bench`, `soak` and the side-by-side comparison with real QEMU."""

# `qemu-hmp NAME ...` runs this room's module's main(argv) (hmp/cli.py imports it lazily).
SUBCOMMANDS = {"demo": "hmp.lab.demo", "bench": "hmp.lab.bench", "soak": "hmp.lab.soak"}

__all__ = ["SUBCOMMANDS"]
