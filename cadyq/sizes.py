"""Sizes as text: width x height, as image tools write them (arrays are indexed height first: pass them so)."""


def size_text(height: int, width: int) -> str:
    return f"{width}x{height}"
