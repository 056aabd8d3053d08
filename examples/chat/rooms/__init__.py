"""The chat rooms: a page to pick a room, a page per room, and the WebSocket consumer behind it."""
