"""The pages: pick a room, the room itself (whose script then opens the WebSocket), and the metrics."""

from __future__ import annotations

import os

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from rooms.rules import MAX_AUTHOR_LENGTH, MAX_TEXT_LENGTH, ROOM_RULE, InvalidInput, check_room

SUGGESTED_ROOMS = ("lobby", "valkey", "random")


def index(request: HttpRequest) -> HttpResponse:
    """``/``: the room picker; ``/?room=NAME`` (its form) goes to that room."""
    wanted = request.GET.get("room")
    if wanted is None:
        return _picker(request)
    try:
        room = check_room(wanted.strip())
    except InvalidInput as exc:
        return _picker(request, error=str(exc), wanted=wanted, status=400)
    return redirect("room", name=room)


def room(request: HttpRequest, name: str) -> HttpResponse:
    """``/room/<name>/``: the chat page of one room."""
    try:
        check_room(name)
    except InvalidInput as exc:
        return _picker(request, error=str(exc), wanted=name, status=400)
    config = {"room": name, "maxAuthor": MAX_AUTHOR_LENGTH, "maxText": MAX_TEXT_LENGTH}
    return render(request, "rooms/room.html", {"room": name, "config": config, **_about()})


def metrics_page(request: HttpRequest) -> HttpResponse:
    """``/metrics``: the channel layer's OpenTelemetry metrics in this worker process, for Prometheus."""
    from chat_project import telemetry

    response = HttpResponse(telemetry.exposition(), content_type=telemetry.CONTENT_TYPE_LATEST)
    response["X-Chat-Worker"] = str(os.getpid())
    return response


def _picker(request: HttpRequest, *, error: str = "", wanted: str = "", status: int = 200) -> HttpResponse:
    context = {"rooms": SUGGESTED_ROOMS, "error": error, "wanted": wanted, "rule": ROOM_RULE, **_about()}
    return render(request, "rooms/index.html", context, status=status)


def _about() -> dict[str, object]:
    return {"layer": settings.CHAT_DEMO_LAYER, "page_worker": os.getpid()}
