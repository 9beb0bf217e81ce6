"""rt2edge stage: quantize (see DESIGN.md)."""
