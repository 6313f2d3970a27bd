"""Request-handling code that the tracing-core benchmark runs under each coverage tool."""
