"""Sample modules whose execution the tracing-core tests measure, and the table of cases."""
