"""aggregation subsystem (see ARCHITECTURE.md)."""
