"""Command groups of the ``fme-bridge`` CLI, one module each; ``fme_bridge.cli`` registers them."""
