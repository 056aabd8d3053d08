"""The ASGI application uvicorn runs: Django for HTTP (plus the static files), the chat consumer for WebSockets."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

from chat_project import telemetry

# Before anything makes the channel layer: its metrics then reach the /metrics page (see telemetry.py).
telemetry.start()
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chat_project.settings")
# Django must be set up before the routing and consumer modules, which read its settings, are imported.
django_application = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402
from rooms.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        # uvicorn serves no files of its own; Django's handler serves /static/ from the apps, as runserver does.
        "http": ASGIStaticFilesHandler(django_application),
        # Browsers send an Origin header: refuse pages of other sites opening sockets to the chat.
        "websocket": AllowedHostsOriginValidator(URLRouter(websocket_urlpatterns)),
    }
)
