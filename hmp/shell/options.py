"""Options of the interactive shell, taken out of argv before QEMU's options are read.

Kept apart from hmp.repl so that batch mode never imports prompt_toolkit.
"""

from __future__ import annotations

from dataclasses import dataclass

# --FLAG (or -FLAG, as QEMU allows) → (field, value)
_FLAGS = {"no-history": ("history", False), "pair": ("pair", True)}

USAGE = """\
shell options:
  --connect unix:PATH | tcp:HOST:PORT
                          the shell in front of a running QEMU's QMP socket (its -qmp
                          ...,server=on): each line runs there (human-monitor-command)
  --no-history            keep no command history (default: $XDG_STATE_HOME/qemu-hmp/history)
  --pair                  also start a destination qemu-hmp on a free 127.0.0.1 port;
                          `dst> LINE` runs LINE there, `src> LINE` (or plain LINE) here,
                          and {dst} in a line stands for the destination's URI
"""


@dataclass(frozen=True)
class ShellOptions:
    history: bool = True
    pair: bool = False
    connect: str | None = None  # a QEMU's QMP address

    @classmethod
    def extract(cls, argv: list[str]) -> tuple[ShellOptions, list[str]]:
        """The shell's options out of ``argv``, and the arguments left (a ``--connect``
        without its address stays there, for the command line's own error)."""
        values: dict[str, bool | str] = {}
        rest = []
        args = iter(argv)
        for arg in args:
            name = arg.lstrip("-") if arg.startswith("-") else None
            flag = _FLAGS.get(name) if name else None
            if name == "connect" and (address := next(args, None)) is not None:
                values["connect"] = address
            elif flag is None:
                rest.append(arg)
            else:
                values[flag[0]] = flag[1]
        return cls(**values), rest  # type: ignore[arg-type]
