from __future__ import annotations

import logging

import pytest

from pollinate.client import ClientApp
from pollinate.errors import ConfigError
from pollinate.records import Context, ErrorCode, Message, MetricRecord, RecordDict


def _message(message_type: str = "train") -> Message:
    return Message(RecordDict(), dst_node_id=3, message_type=message_type)


def _context() -> Context:
    return Context(run_id=1, node_id=3)


def test_dispatches_by_message_type_and_sub_action() -> None:
    app = ClientApp()
    app.train()(lambda m, c: m.reply(RecordDict({"m": MetricRecord({"which": 1})})))
    app.query("histogram")(lambda m, c: m.reply(RecordDict({"m": MetricRecord({"which": 2})})))

    assert app(_message("train"), _context()).content["m"]["which"] == 1
    assert app(_message("query.histogram"), _context()).content["m"]["which"] == 2


def test_bare_decorator_and_record_dict_return_work() -> None:
    app = ClientApp()

    @app.evaluate
    def evaluate(msg: Message, context: Context) -> RecordDict:
        return RecordDict({"m": MetricRecord({"node": context.node_id})})

    reply = app(_message("evaluate"), _context())
    assert reply.content["m"]["node"] == 3


def test_a_raising_handler_becomes_an_error_reply_with_the_traceback_only_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        raise ValueError("secret path /data/patient.csv is bad")

    with caplog.at_level(logging.ERROR):
        reply = app(_message(), _context())

    assert reply.has_error()
    assert reply.error is not None and reply.error.code == ErrorCode.CLIENT_APP_RAISED
    assert "Traceback" not in reply.error.reason
    assert "Traceback" in caplog.text


def test_missing_handler_and_wrong_return_type_are_error_replies() -> None:
    app = ClientApp()
    app.train()(lambda m, c: 42)
    no_handler = app(_message("evaluate"), _context())
    wrong_type = app(_message("train"), _context())
    assert no_handler.error is not None and no_handler.error.code == ErrorCode.NO_HANDLER
    assert "has no handler for 'evaluate'" in no_handler.error.reason
    assert wrong_type.error is not None and wrong_type.error.code == ErrorCode.BAD_REPLY
    assert "returned int" in wrong_type.error.reason


def test_reply_to_another_message_is_refused() -> None:
    app = ClientApp()
    app.train()(lambda m, c: _message().reply(RecordDict()))
    reply = app(_message(), _context())
    assert reply.error is not None and reply.error.code == ErrorCode.BAD_REPLY


def test_mods_wrap_handlers_outermost_first() -> None:
    calls: list[str] = []

    def mod(name: str):
        def wrapped(msg: Message, ctx: Context, call_next):
            calls.append(f"{name}-in")
            reply = call_next(msg, ctx)
            calls.append(f"{name}-out")
            return reply

        return wrapped

    app = ClientApp(mods=[mod("a"), mod("b")])
    app.train()(lambda m, c: calls.append("handler") or m.reply(RecordDict()))
    app(_message(), _context())
    assert calls == ["a-in", "b-in", "handler", "b-out", "a-out"]


def test_a_mod_that_raises_is_contained() -> None:
    def broken(msg: Message, ctx: Context, call_next):
        raise RuntimeError("mod bug")

    app = ClientApp(mods=[broken])
    app.train()(lambda m, c: m.reply(RecordDict()))
    reply = app(_message(), _context())
    assert reply.error is not None and "mod bug" in reply.error.reason


def test_duplicate_handler_and_bad_action_names_are_config_errors() -> None:
    app = ClientApp()
    app.train()(lambda m, c: m.reply(RecordDict()))
    with pytest.raises(ConfigError, match="already has a handler"):
        app.train()(lambda m, c: m.reply(RecordDict()))
    with pytest.raises(ConfigError, match="without dots"):
        app.query("a.b")
