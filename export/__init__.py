"""rt2edge stage: export (see DESIGN.md)."""
