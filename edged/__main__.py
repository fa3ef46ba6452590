"""``python -m edged`` is the ``edged`` command."""

from edged.cli.app import main

main()
