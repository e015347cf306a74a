"""Records and messages: the data model every other part of Pollinate speaks.

Three kinds of record (arrays, metrics, config) are grouped in a RecordDict, which is
the content of a Message. Everything here is plain data with validation on the way in;
it imports nothing from the rest of Pollinate except errors, so any layer may use it.
"""

from pollinate.records import keys
from pollinate.records.arrays import SUPPORTED_DTYPES, ArrayRecord
from pollinate.records.context import Context, UserConfig
from pollinate.records.message import (
    DEFAULT_TTL,
    SERVER_NODE_ID,
    Error,
    ErrorCode,
    Message,
    Metadata,
)
from pollinate.records.recorddict import Record, RecordDict
from pollinate.records.scalars import ConfigRecord, ConfigValue, MetricRecord, MetricValue, Scalar

__all__ = [
    "DEFAULT_TTL",
    "SERVER_NODE_ID",
    "SUPPORTED_DTYPES",
    "ArrayRecord",
    "ConfigRecord",
    "ConfigValue",
    "Context",
    "Error",
    "ErrorCode",
    "Message",
    "Metadata",
    "MetricRecord",
    "MetricValue",
    "Record",
    "RecordDict",
    "Scalar",
    "UserConfig",
    "keys",
]
