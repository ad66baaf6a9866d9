"""audit subsystem (see ARCHITECTURE.md)."""
