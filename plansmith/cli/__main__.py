"""``python -m plansmith.cli``: the ``plansmith`` command."""

from plansmith.cli.main import main

main()
