"""ClientApp: the handlers that run on a node, next to its data.

A ClientApp maps message types to handler functions. It never raises for a failing
handler: the failure becomes an error reply (the traceback goes to the node's log, not
on the wire), so the server's round goes on with the other nodes.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import TypeAlias, overload

from pollinate.errors import ClientAppError, ConfigError
from pollinate.records import Context, Error, ErrorCode, Message, RecordDict, keys

__all__ = ["ClientApp", "Handler", "Mod"]

log = logging.getLogger(__name__)

#: A handler takes the instruction and this node's context and returns the reply. It may
#: return a bare RecordDict, which becomes ``message.reply(content)``.
Handler: TypeAlias = Callable[[Message, Context], "Message | RecordDict"]
#: Middleware around every handler call: ``mod(message, context, call_next) -> reply``.
Mod: TypeAlias = Callable[[Message, Context, Callable[[Message, Context], Message]], Message]


class ClientApp:
    """Handlers for the messages a node answers, plus mods (middleware) around them.

    Parameters
    ----------
    mods:
        Called outermost first; each gets the message, the context, and ``call_next``.

    Examples
    --------
    >>> app = ClientApp()
    >>> @app.train()
    ... def train(msg: Message, context: Context) -> Message:
    ...     return msg.reply(RecordDict())
    >>> @app.query("histogram")
    ... def histogram(msg: Message, context: Context) -> Message:
    ...     return msg.reply(RecordDict())
    >>> sorted(app.message_types)
    ['query.histogram', 'train']
    """

    def __init__(self, *, mods: Sequence[Mod] = ()) -> None:
        self._handlers: dict[str, Handler] = {}
        self._mods: tuple[Mod, ...] = tuple(mods)

    @property
    def message_types(self) -> frozenset[str]:
        """The message types this app has handlers for (``"train"``, ``"query.histogram"``...)."""
        return frozenset(self._handlers)

    def _register(
        self, base: str, action: str | Handler | None
    ) -> Callable[[Handler], Handler] | Handler:
        if callable(action):  # used bare, as ``@app.train``
            return self._register_as(base, action)
        if action is not None and (not isinstance(action, str) or not action or "." in action):
            raise ConfigError(f"@app.{base}(...) takes an action name without dots, got {action!r}")
        message_type = base if action is None else f"{base}.{action}"
        return functools.partial(self._register_as, message_type)

    def _register_as(self, message_type: str, handler: Handler) -> Handler:
        if message_type in self._handlers:
            raise ConfigError(f"ClientApp already has a handler for {message_type!r}")
        self._handlers[message_type] = handler
        return handler

    @overload
    def train(self, action: Handler) -> Handler: ...
    @overload
    def train(self, action: str | None = None) -> Callable[[Handler], Handler]: ...
    def train(self, action: str | Handler | None = None) -> Callable[[Handler], Handler] | Handler:
        """Register the handler for ``train`` messages (or ``train.<action>``)."""
        return self._register(keys.TRAIN, action)

    @overload
    def evaluate(self, action: Handler) -> Handler: ...
    @overload
    def evaluate(self, action: str | None = None) -> Callable[[Handler], Handler]: ...
    def evaluate(
        self, action: str | Handler | None = None
    ) -> Callable[[Handler], Handler] | Handler:
        """Register the handler for ``evaluate`` messages (or ``evaluate.<action>``)."""
        return self._register(keys.EVALUATE, action)

    @overload
    def query(self, action: Handler) -> Handler: ...
    @overload
    def query(self, action: str | None = None) -> Callable[[Handler], Handler]: ...
    def query(self, action: str | Handler | None = None) -> Callable[[Handler], Handler] | Handler:
        """Register the handler for ``query`` messages (or ``query.<action>``)."""
        return self._register(keys.QUERY, action)

    def __call__(self, message: Message, context: Context) -> Message:
        """Answer ``message``; any failure becomes an error reply, never an exception."""
        call: Callable[[Message, Context], Message] = self._dispatch
        for mod in reversed(self._mods):
            call = functools.partial(mod, call_next=call)  # type: ignore[call-arg]
        try:
            reply = call(message, context)
        except Exception as exc:  # a node's code failing must not take the node down
            return _error_reply(message, context, exc)
        if not isinstance(reply, Message) or not _answers(reply, message):
            return message.reply(
                error=Error(ErrorCode.BAD_REPLY, "a mod returned something that is not a reply")
            )
        return reply

    def _dispatch(self, message: Message, context: Context) -> Message:
        message_type = message.metadata.message_type
        handler = self._handlers.get(message_type)
        if handler is None:
            known = ", ".join(sorted(self._handlers)) or "none"
            return message.reply(
                error=Error(
                    ErrorCode.NO_HANDLER,
                    f"this ClientApp has no handler for {message_type!r} (it has: {known})",
                )
            )
        reply = handler(message, context)
        if isinstance(reply, RecordDict):
            return message.reply(reply)
        if not isinstance(reply, Message):
            raise ClientAppError(
                f"the {message_type!r} handler returned {type(reply).__name__}; return "
                "msg.reply(RecordDict(...)) or a RecordDict"
            )
        if not _answers(reply, message):
            raise ClientAppError(
                f"the {message_type!r} handler returned a message that is not a reply to the "
                "one it got; build it with msg.reply(...)"
            )
        return reply


def _answers(reply: Message, request: Message) -> bool:
    return reply.metadata.reply_to_message_id == request.metadata.message_id


def _error_reply(message: Message, context: Context, exc: Exception) -> Message:
    log.error(
        "node %s: %s handler raised %s",
        context.node_id,
        message.metadata.message_type,
        type(exc).__name__,
        exc_info=exc,
    )
    reason = f"{type(exc).__name__}: {exc}"
    code = ErrorCode.BAD_REPLY if isinstance(exc, ClientAppError) else ErrorCode.CLIENT_APP_RAISED
    return message.reply(error=Error(code, reason[:500]))
