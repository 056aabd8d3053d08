"""Settings of the chat demo: no database, no sessions, one channel layer chosen by environment variables.

``examples/chat/run.py`` sets the variables; to run the app by other means, set them yourself:

- ``CHAT_DEMO_LAYER``: ``core`` (``channels_valkey.core``, the default) or ``pubsub`` (``channels_valkey.pubsub``);
- ``CHAT_DEMO_HOSTS``: the layer's ``hosts``, whitespace-separated URLs (default ``valkey://127.0.0.1:6379/0``);
- ``CHAT_DEMO_ALLOWED_HOSTS``: Django's ``ALLOWED_HOSTS``, whitespace-separated (default: loopback names only).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

LAYER_BACKENDS = {
    "core": "channels_valkey.core.ValkeyChannelLayer",
    "pubsub": "channels_valkey.pubsub.ValkeyPubSubChannelLayer",
}

CHAT_DEMO_LAYER = os.environ.get("CHAT_DEMO_LAYER", "core")
if CHAT_DEMO_LAYER not in LAYER_BACKENDS:
    raise ImproperlyConfigured(
        f"CHAT_DEMO_LAYER={CHAT_DEMO_LAYER!r} is not a layer of the demo; use one of {', '.join(LAYER_BACKENDS)}"
    )
CHAT_DEMO_HOSTS = os.environ.get("CHAT_DEMO_HOSTS", "valkey://127.0.0.1:6379/0").split()
if not CHAT_DEMO_HOSTS:
    raise ImproperlyConfigured("CHAT_DEMO_HOSTS is empty; give at least one valkey:// URL")

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": LAYER_BACKENDS[CHAT_DEMO_LAYER],
        "CONFIG": {"hosts": CHAT_DEMO_HOSTS, "prefix": "chat-demo"},
    },
}

# Nothing is signed (no sessions, no CSRF-protected forms), so a key made per process is enough.
SECRET_KEY = os.environ.get("CHAT_DEMO_SECRET_KEY") or secrets.token_urlsafe(40)
DEBUG = False
ALLOWED_HOSTS = os.environ.get("CHAT_DEMO_ALLOWED_HOSTS", "localhost 127.0.0.1 [::1]").split()

INSTALLED_APPS = [
    "django.contrib.staticfiles",
    "rooms",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "chat_project.urls"
ASGI_APPLICATION = "chat_project.asgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": []},
    },
]
DATABASES: dict[str, dict[str, str]] = {}
STATIC_URL = "static/"
USE_TZ = True

# With DEBUG off, Django logs nothing to the console by default: show warnings and errors on stderr.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "django": {"handlers": ["console"], "level": "WARNING"},
        "channels_valkey": {"handlers": ["console"], "level": "WARNING"},
        "rooms": {"handlers": ["console"], "level": "INFO"},
    },
}
