"""Django settings of the example shop: no database, no templates, JSON views only."""

from __future__ import annotations

import os

SECRET_KEY = os.environ.get("SHOP_DJANGO_SECRET", "example-only-not-secret")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "shop_django.urls"
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
