"""The chat page: static files in `static/`, served at `/` by `api.web.page`."""
