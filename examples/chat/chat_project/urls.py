"""HTTP routes: the room picker and the room pages."""

from __future__ import annotations

from django.urls import path
from rooms import views

urlpatterns = [
    path("", views.index, name="index"),
    path("room/<str:name>/", views.room, name="room"),
]
