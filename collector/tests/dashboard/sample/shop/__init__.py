"""A tiny shop whose coverage the dashboard tests display."""
