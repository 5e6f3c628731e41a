"""`python -m qcat` is the `qcat` command."""

from qcat.cli import app

app()
