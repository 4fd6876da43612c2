"""The platform edge: the `omnicart` command, local service supervision, the demo and the mail sink (above the core)."""
