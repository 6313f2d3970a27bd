"""Errors the store raises to its callers."""

from __future__ import annotations


class StoreError(Exception):
    """Base class of the store's own errors."""


class NotFound(StoreError, LookupError):
    """The service, release or file a query names is not in the store (HTTP 404)."""


class StoreClosed(StoreError, RuntimeError):
    """The store was closed (the collector is shutting down); a later request may succeed."""
