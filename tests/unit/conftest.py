"""Unit tests' process set-up."""

import os

# pytest-xdist's workers set COLUMNS=80, which the CLI's module-level rich consoles would fix as their width when
# first imported; the CLI tests give the width they need per invocation (CliRunner's env).
os.environ.pop("COLUMNS", None)
os.environ.pop("LINES", None)
