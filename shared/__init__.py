"""Code shared by the bridge's Lambda functions, the CLI and the local stack."""

__version__ = "0.1.0"
