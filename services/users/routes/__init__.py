"""HTTP handlers of the users service: parse -> call the service -> render."""

# Importing the handler modules registers their routes on the shared table, in this order.
from services.users.routes import api_keys, auth, users  # noqa: F401
from services.users.routes.common import routes

__all__ = ["routes"]
