"""An observer of points changes, as a plugin that mails customers ("you
earned 35 points") is written, and one that fails."""

from __future__ import annotations

from engine.hookspecs import hookimpl


class PointsNotifier:
    """Keeps what it heard: (email, [(amount, reason), ...], balance)."""

    def __init__(self):
        self.heard: list[tuple[str | None, list[tuple[int, str]], int]] = []

    @hookimpl
    def regulars_points_changed(self, customer, changes, balance):
        self.heard.append((customer.email, [(c.amount, c.reason) for c in changes], balance))


class BrokenNotifier:
    """The mail server is down."""

    @hookimpl
    def regulars_points_changed(self, customer, changes, balance):
        raise ConnectionError("the mail server is down")
