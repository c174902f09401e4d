"""The transcript format (``.hmpt``): a cram-like text file of a monitor session.

Unindented lines are prose. Indented (two spaces) lines are steps or expected output:

    $ NAME: COMMAND LINE     start an endpoint (``qemu-hmp ...``); ``{port}`` is allocated
    NAME> HMP LINE           type a line at endpoint NAME; expected output follows
    @DIRECTIVE ARGS          @wait, @kill, @stderr (see hmp/runner.py)
    any other line           one line of output expected from the step above

An expected line matches literally, or as a regex when it ends in `` (re)``, or with named
placeholders such as ``{ms}`` and ``{float}`` (PLACEHOLDERS); ``{port}``, ``{port2}``… stand
for the ports allocated for this run.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

INDENT = "  "
RE_SUFFIX = " (re)"

# Named patterns for volatile figures; they read better than raw regexes.
PLACEHOLDERS = {
    "int": r"-?\d+",
    "float": r"-?\d+\.\d+",
    "ms": r"\d+",
    "kb": r"\d+",
    "pct": r"\d+",
    "size": r"\d+(?:\.\d+)? (?:B|KiB|MiB|GiB|TiB)",  # QEMU 11.1's size_to_str
    "*": r".*",
}
_PORT = re.compile(r"\{(port\d*)\}")
_PLACEHOLDER = re.compile(r"\{(port\d*|" + "|".join(map(re.escape, PLACEHOLDERS)) + r")\}")
_START = re.compile(r"\$ (?P<name>[A-Za-z][\w-]*): (?P<arg>.*)")
_COMMAND = re.compile(r"(?P<name>[A-Za-z][\w-]*)> ?(?P<arg>.*)")


class TranscriptError(Exception):
    def __init__(self, lineno: int, message: str) -> None:
        super().__init__(f"line {lineno}: {message}")


class Kind(enum.Enum):
    PROSE = "prose"
    START = "start"  # $ NAME: ARGV
    COMMAND = "command"  # NAME> LINE
    DIRECTIVE = "directive"  # @WORD ARGS


@dataclass
class Step:
    kind: Kind
    text: str  # prose: the whole line; otherwise the line without its indent
    lineno: int = 0
    name: str = ""  # the endpoint of START and COMMAND
    arg: str = ""  # START: command line; COMMAND: HMP line; DIRECTIVE: text after the @
    expected: list[str] = field(default_factory=list)


def classify(body: str, names: set[str], lineno: int = 0) -> Step | None:
    """The step an indented line ``body`` starts, or None when it is an output line.

    ``NAME>`` is a command only for a NAME started earlier, so output such as ``a> b`` from
    an unknown name stays output. START adds its name to ``names``.
    """
    if m := _START.fullmatch(body):
        names.add(m["name"])
        return Step(Kind.START, body, lineno, m["name"], m["arg"])
    if body.startswith("@"):
        return Step(Kind.DIRECTIVE, body, lineno, arg=body[1:])
    if (m := _COMMAND.fullmatch(body)) and m["name"] in names:
        return Step(Kind.COMMAND, body, lineno, m["name"], m["arg"])
    return None


def parse(text: str) -> list[Step]:
    steps: list[Step] = []
    names: set[str] = set()
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.startswith(INDENT):
            steps.append(Step(Kind.PROSE, line, lineno))
            continue
        body = line[len(INDENT) :]
        step = classify(body, names, lineno)
        if step is not None:
            steps.append(step)
        elif steps and steps[-1].kind is not Kind.PROSE:
            steps[-1].expected.append(body)
        else:
            raise TranscriptError(lineno, f"output without a command above it: {line!r}")
    return steps


def render(steps: Sequence[Step]) -> str:
    lines: list[str] = []
    for step in steps:
        if step.kind is Kind.PROSE:
            lines.append(step.text)
        else:
            lines.append(INDENT + step.text)
            lines += [INDENT + line for line in step.expected]
    return "".join(line + "\n" for line in lines)


def expand_ports(text: str, ports: Mapping[str, int]) -> str:
    """``{port}`` -> the port allocated for this run (unknown names are left alone)."""
    return _PORT.sub(lambda m: str(ports.get(m[1], m[0])), text)


def port_names(text: str) -> list[str]:
    return _PORT.findall(text)


@functools.lru_cache(maxsize=4096)
def _compile(expected: str, ports: tuple[tuple[str, int], ...]) -> re.Pattern[str] | None:
    if expected.endswith(RE_SUFFIX):
        try:
            return re.compile(expand_ports(expected[: -len(RE_SUFFIX)], dict(ports)))
        except re.error:
            return None  # a broken regex matches nothing; the diff shows the line
    known = dict(ports)
    parts: list[str] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(expected):
        name = m[1]
        if name.startswith("port"):
            value = re.escape(str(known[name])) if name in known else r"\d+"
        else:
            value = PLACEHOLDERS[name]
        parts += [re.escape(expected[pos : m.start()]), value]
        pos = m.end()
    return re.compile("".join(parts) + re.escape(expected[pos:]))


def matches(expected: str, actual: str, ports: Mapping[str, int]) -> bool:
    if not expected.endswith(RE_SUFFIX) and "{" not in expected:
        return expected == actual
    pattern = _compile(expected, tuple(sorted(ports.items())))
    return pattern is not None and pattern.fullmatch(actual) is not None


def reconcile(
    expected: Sequence[str],
    actual: Sequence[str],
    ports: Mapping[str, int],
    fallback: Callable[[str], str],
) -> list[str]:
    """The actual lines, written as the expected line wherever one matches (patterns kept).

    Lines are aligned by a longest common subsequence under ``matches``, as diff would, so
    one extra or missing line shows as one line in the diff. Unmatched actual lines go
    through ``fallback`` (e.g. turning volatile figures into placeholders).
    """
    n, m = len(expected), len(actual)
    ok = [[matches(e, a, ports) for a in actual] for e in expected]
    lcs = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            lcs[i][j] = lcs[i + 1][j + 1] + 1 if ok[i][j] else max(lcs[i + 1][j], lcs[i][j + 1])
    out: list[str] = []
    i = j = 0
    while j < m:
        if i < n and ok[i][j] and lcs[i][j] == lcs[i + 1][j + 1] + 1:
            out.append(expected[i])
            i, j = i + 1, j + 1
        elif i < n and lcs[i + 1][j] >= lcs[i][j + 1]:
            i += 1
        else:
            out.append(fallback(actual[j]))
            j += 1
    return out


# `info migrate` lines whose figure depends on timing, keyed by label: recorded as patterns.
TIMING = {
    "total time": "{ms} ms",
    "expected downtime": "{ms} ms",
    "downtime": "{ms} ms",
    "setup": "{ms} ms",
    "throughput": "{float} mbps",
    "dirty sync count": "{int}",
    "pages-per-second": "{int}",
    "dirty pages rate": "{int} pages",
    "precopy ram": "{kb} kbytes",
    "downtime ram": "{kb} kbytes",
    "compression busy": "{int}",
    "compression busy rate": "{float}",
    "compression rate": "{float}",
    "xbzrle cache miss rate": "{float}",
    "xbzrle encoding rate": "{float}",
    "cpu throttle percentage": "{pct}",
}
# Counts that are exact once a migration of a quiet guest has completed (same seed, same
# size), but depend on timing while it runs, when it was cut short, or when the guest writes.
COUNTS = {
    "transferred ram": "{kb} kbytes",
    "remaining ram": "{kb} kbytes",
    "duplicate": "{int} pages",
    "normal": "{int} pages",
    "normal bytes": "{kb} kbytes",
    "compression pages": "{int} pages",
    "compressed size": "{kb} kbytes",
    "xbzrle transferred": "{kb} kbytes",
    "xbzrle pages": "{int} pages",
    "xbzrle cache miss": "{int} pages",
    "xbzrle overflow": "{int}",
}
STATUS_LABEL = "Migration status"
# QEMU 11.1's `info migrate` groups its figures as `label=value` after a label: in these
# lines every figure is volatile while a migration runs, and the timing ones always.
FIGURES_11 = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?: (?:B|KiB|MiB|GiB|TiB)\b)?")
# The precopy/downtime split depends on when the stop falls, and `Others` adds figures
# (downtime_bytes, ...) only when they are not zero.
TIMING_11: tuple[str, ...] = (
    "Time (ms):",
    "  Throughput (Mbps):",
    "    Channels:",
    "  Page Rates (pps):",
)
COUNTS_11: tuple[str, ...] = ("Remaining:", "  Transfers:", "    Page Types:", "XBZRLE:")
COUNTS_11 += ("  miss_rate=", "CPU Throttle (%):")
OTHERS_11 = "  Others: \t\t"


def _figures_11(line: str) -> str:
    def placeholder(m: re.Match[str]) -> str:
        text = m[0]
        return "{size}" if " " in text else "{float}" if "." in text else "{int}"

    return FIGURES_11.sub(placeholder, line)


def generaliser(
    output: Sequence[str], ports: Mapping[str, int], quiet_guest: bool
) -> Callable[[str], str]:
    """How to record one line of ``output``: volatile figures become placeholders."""
    completed = f"{STATUS_LABEL}: completed" in output or "Status: \t\tcompleted" in output
    table = TIMING if quiet_guest and completed else TIMING | COUNTS
    labels_11 = TIMING_11 if quiet_guest and completed else TIMING_11 + COUNTS_11

    def generalise(line: str) -> str:
        if line.startswith(OTHERS_11):
            return OTHERS_11 + "{*}"
        if line.startswith(labels_11):
            return _figures_11(line)
        label, sep, _ = line.partition(": ")
        if sep and label in table:
            pattern = f"{label}: {table[label]}"
            if matches(pattern, line, {}):
                return pattern
        return literal(line, ports)

    return generalise


def literal(line: str, ports: Mapping[str, int]) -> str:
    """``line`` as an expected line that matches exactly it (ports written as ``{port}``)."""
    if line.endswith(RE_SUFFIX) or _PLACEHOLDER.search(line):
        return re.escape(line) + RE_SUFFIX  # it would read as a pattern otherwise
    if line.startswith(("@", "$ ")) or _COMMAND.fullmatch(line):
        return "(?:)" + re.escape(line) + RE_SUFFIX  # it would read as a step otherwise
    for name, port in ports.items():
        line = re.sub(rf"(?<!\d){port}(?!\d)", "{" + name + "}", line)
    return line
