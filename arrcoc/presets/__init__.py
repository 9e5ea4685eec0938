"""Embedded presets: open_clip model configs for the tiny encoder (registered on import of arrcoc.encoder)."""
