"""rt2edge stage: distill (see DESIGN.md)."""
