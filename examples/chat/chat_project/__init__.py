"""The Django project of the chat demo: settings, URLs and the ASGI application uvicorn serves."""
