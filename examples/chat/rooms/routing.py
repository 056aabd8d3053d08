"""WebSocket routes of the rooms app."""

from __future__ import annotations

from django.urls import re_path

from rooms.consumers import ChatConsumer

# Any room name, even one with a slash, reaches the consumer, which checks it and tells the client what is wrong.
websocket_urlpatterns = [
    re_path(r"^ws/chat/(?P<room>.+)/$", ChatConsumer.as_asgi()),
]
