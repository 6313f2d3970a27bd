"""Tests of the runcov CLI reports against a real collector."""
