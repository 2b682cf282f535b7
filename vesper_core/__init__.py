"""VesperLM and the shared base of every Vesper package (errors, registries, devices)."""

__version__ = "0.1.0"
