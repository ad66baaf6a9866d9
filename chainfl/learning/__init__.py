"""learning subsystem (see ARCHITECTURE.md)."""
