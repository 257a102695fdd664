"""``python -m featwrap`` (and ``torchrun -m featwrap``) runs the command line."""

from featwrap.cli import _entry

_entry()
