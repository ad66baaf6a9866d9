"""storage subsystem (see ARCHITECTURE.md)."""
