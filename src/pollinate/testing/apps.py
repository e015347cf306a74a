"""Small ClientApps used by tests and conformance checks."""

from __future__ import annotations

from pollinate.client import ClientApp
from pollinate.records import Context, Message, MetricRecord, RecordDict, keys

__all__ = ["echo_app"]

echo_app = ClientApp()


@echo_app.train()
def _echo(message: Message, context: Context) -> Message:
    content = RecordDict(
        {
            keys.ARRAYS: message.content[keys.ARRAYS],
            keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: 1}),
        }
    )
    return message.reply(content)


@echo_app.query("fail")
def _fail(message: Message, context: Context) -> Message:
    raise RuntimeError("this handler always fails")
