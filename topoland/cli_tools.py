"""Subcommands on checkpoints and pairs of minima: surface, neb, connect."""
from __future__ import annotations

HANDLERS: dict = {}


def add_commands(subs, make):
    """Register the checkpoint-level subcommands on ``subs`` (``make`` builds a subparser)."""
