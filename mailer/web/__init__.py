"""The review page: staff read replies and decide on cases in a browser (served on loopback)."""

from mailer.web.server import WebServer, build_web, serve

__all__ = ["WebServer", "build_web", "serve"]
