"""The operator side of fme-segment-bridge: the ``fme-bridge`` CLI and the local stack."""
