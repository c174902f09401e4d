"""What a program driving a monitor over a pipe reads: the prompt and the end-of-output marker.

Its own module, importing nothing, so that drivers (hmp/harness, hmp/lab) learn these two
constants without loading the engine.
"""

PROMPT = "(qemu) "

# Opt-in for programs driving qemu-hmp over a pipe (hmp/harness/endpoint.py): when this
# variable is set, its value is printed on a line of its own after each command's output. A
# monitor prints nothing at the end of a command, so without it a driver could not tell "done"
# from "slow".
END_MARKER_ENV = "QEMU_HMP_END_MARKER"
