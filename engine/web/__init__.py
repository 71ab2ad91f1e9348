"""The HTTP app: webhook receivers (and, later, the POS and customer API and the pages)."""

from engine.web.app import create_app

__all__ = ["create_app"]
