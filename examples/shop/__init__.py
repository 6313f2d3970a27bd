"""The shop's domain (catalog, pricing, stock, payments, orders), shared by every example app."""

from __future__ import annotations
