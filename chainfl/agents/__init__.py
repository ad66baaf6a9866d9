"""agents subsystem (see ARCHITECTURE.md)."""
