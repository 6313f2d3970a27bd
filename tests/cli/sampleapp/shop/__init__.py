"""A small shop used as the measured application in runcov's CLI tests."""
