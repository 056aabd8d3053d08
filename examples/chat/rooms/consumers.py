"""The WebSocket end of a room: one consumer per browser tab, talking to the others through the channel layer.

Each uvicorn worker is its own process with its own consumers; the only way a message typed on one worker
reaches a tab connected to another is the Valkey channel layer (``group_send`` to the room's group). Every frame
therefore names the worker processes involved, so the page and the tests can show that hop.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from rooms.rules import InvalidInput, check_chat_message, group_for

logger = logging.getLogger(__name__)

#: Close code for a connection refused because of what the client asked for (4000-4999: for applications).
CLOSE_INVALID = 4400


class ChatConsumer(AsyncWebsocketConsumer):
    """``/ws/chat/<room>/``: joins the room's group, relays the visitor's messages to it and back out."""

    group: str | None = None

    async def connect(self) -> None:
        room = self.scope["url_route"]["kwargs"]["room"]
        # Accept first, so that the refusal can say why: a WebSocket rejected during the handshake gets no frame.
        await self.accept()
        try:
            group = group_for(room)
        except InvalidInput as exc:
            await self.send_frame({"type": "error", "error": str(exc)})
            await self.close(code=CLOSE_INVALID)
            return
        await self.channel_layer.group_add(group, self.channel_name)
        self.group = group
        await self.send_frame(
            {"type": "welcome", "worker": os.getpid(), "layer": settings.CHAT_DEMO_LAYER, "room": room}
        )

    async def disconnect(self, code: int) -> None:
        if self.group is not None:
            await self.channel_layer.group_discard(self.group, self.channel_name)
            self.group = None

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.group is None:
            return  # a refused connection, closing
        try:
            if text_data is None:
                raise InvalidInput("send JSON text frames, not binary ones")
            try:
                content = json.loads(text_data)
            except json.JSONDecodeError as exc:
                raise InvalidInput(f"a frame must be JSON: {exc}") from exc
            author, text = check_chat_message(content)
        except InvalidInput as exc:
            await self.send_frame({"type": "error", "error": str(exc)})
            return
        await self.channel_layer.group_send(
            self.group,
            {"type": "chat.message", "author": author, "text": text, "worker": os.getpid()},
        )

    async def chat_message(self, event: dict[str, Any]) -> None:
        """A message of the room, from any worker: pass it on, stamped with the worker delivering it."""
        await self.send_frame(
            {
                "type": "message",
                "author": event["author"],
                "text": event["text"],
                "worker": event["worker"],
                "delivered_by": os.getpid(),
            }
        )

    async def send_frame(self, frame: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(frame))
