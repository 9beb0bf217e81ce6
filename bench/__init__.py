"""rt2edge stage: bench (see DESIGN.md)."""
