"""The node side: ClientApp and its mods."""

from pollinate.client.app import ClientApp, Handler, Mod

__all__ = ["ClientApp", "Handler", "Mod"]
