"""``python -m fme_bridge``: the ``fme-bridge`` command."""

from fme_bridge.cli import main

main()
