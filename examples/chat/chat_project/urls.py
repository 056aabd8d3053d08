"""HTTP routes: the room picker, the room pages and the metrics page."""

from __future__ import annotations

from django.urls import path
from rooms import views

urlpatterns = [
    path("", views.index, name="index"),
    path("room/<str:name>/", views.room, name="room"),
    path("metrics", views.metrics_page, name="metrics"),
]
