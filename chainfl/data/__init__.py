"""data subsystem (see ARCHITECTURE.md)."""
