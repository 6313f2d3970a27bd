"""URL routes of the Django shop."""

from __future__ import annotations

from django.urls import path

from shop_django import views

urlpatterns = [
    path("health", views.health),
    path("products", views.products),
    path("products/<int:product_id>", views.product),
    path("quote", views.quote),
    path("orders", views.orders),
    path("orders/<str:order_id>", views.order),
    path("orders/<str:order_id>/cancel", views.cancel),
    path("admin/flush", views.flush),
]
