"""Business logic shared by the test services."""
