"""chain subsystem (see ARCHITECTURE.md)."""
