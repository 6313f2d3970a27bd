"""Runs one named request against the sample shop (the inputs of runcov's CLI tests)."""

from __future__ import annotations

import sys

from shop import views

REQUESTS = {
    "checkout-fr": ("POST /checkout", lambda: views.checkout([(10.0, 3)], "fr")),
    "checkout-half": ("POST /checkout", lambda: views.checkout([(2.0, 12)], "de", "HALF")),
    "checkout-bad": ("POST /checkout", lambda: views.checkout([(1.0, 1)], "xx", "OFF5")),
    "item-even": ("GET /items/{item_id}", lambda: views.item(4)),
    "item-missing": ("GET /items/{item_id}", lambda: views.item(-1)),
    "admin": ("GET /admin/report", lambda: views.Admin().report(False)),
    "never-called": ("job never_called", lambda: views.pricing.never_called(3)),
}

if __name__ == "__main__":
    for name in sys.argv[1:]:
        REQUESTS[name][1]()
