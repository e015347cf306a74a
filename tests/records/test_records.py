from __future__ import annotations

import numpy as np
import pytest

from pollinate.errors import ConfigError
from pollinate.records import (
    ArrayRecord,
    ConfigRecord,
    Error,
    ErrorCode,
    Message,
    MetricRecord,
    RecordDict,
)


def test_array_record_keeps_order_and_does_not_copy_contiguous_arrays() -> None:
    w = np.zeros((2, 3), np.float32)
    record = ArrayRecord({"w": w, "b": np.ones(3)})

    assert list(record) == ["w", "b"]
    assert record["w"] is w
    assert record.num_parameters == 9


def test_array_record_from_list_round_trips() -> None:
    arrays = [np.arange(3), np.eye(2)]
    record = ArrayRecord.from_list(arrays)
    assert list(record) == ["0", "1"]
    assert all(a is b for a, b in zip(record.to_list(), arrays, strict=True))


@pytest.mark.parametrize("bad", [np.array(["a"]), np.array([1 + 2j]), [1, 2], "x"])
def test_array_record_rejects_what_cannot_travel(bad: object) -> None:
    with pytest.raises(ConfigError, match="'x'"):
        ArrayRecord({"x": bad})  # type: ignore[dict-item]


def test_array_record_normalizes_byte_order_and_layout() -> None:
    big_endian = np.arange(4, dtype=">i4")
    fortran = np.asfortranarray(np.ones((3, 2)))
    record = ArrayRecord({"a": big_endian, "f": fortran})
    assert record["a"].dtype.isnative and record["a"].tolist() == [0, 1, 2, 3]
    assert record["f"].flags.c_contiguous


def test_metric_record_normalizes_numpy_scalars_and_rejects_strings() -> None:
    record = MetricRecord({"loss": np.float32(0.5), "n": np.int64(3), "hist": np.array([1, 2])})
    assert record == MetricRecord({"loss": 0.5, "n": 3, "hist": [1, 2]})
    assert type(record["n"]) is int
    with pytest.raises(ConfigError, match="metric 'name'"):
        MetricRecord({"name": "abc"})
    with pytest.raises(ConfigError, match="metric 'flag'"):
        MetricRecord({"flag": True})


def test_config_record_accepts_scalars_and_homogeneous_lists() -> None:
    record = ConfigRecord({"lr": 0.1, "name": "sgd", "raw": b"\x00", "on": True, "xs": [1, 2.5]})
    assert record["xs"] == [1.0, 2.5]
    with pytest.raises(ConfigError, match="mixes"):
        ConfigRecord({"bad": ["a", 1]})
    with pytest.raises(ConfigError, match="config 'd'"):
        ConfigRecord({"d": {"nested": 1}})


def test_record_dict_groups_by_kind_and_checks_values() -> None:
    content = RecordDict(
        {"arrays": ArrayRecord(), "metrics": MetricRecord(), "config": ConfigRecord()}
    )
    assert list(content.array_records) == ["arrays"]
    assert list(content.metric_records) == ["metrics"]
    with pytest.raises(ConfigError, match="expected ArrayRecord"):
        content.get_kind("metrics", ArrayRecord)
    with pytest.raises(ConfigError, match="no ArrayRecord named 'nope'"):
        content.get_kind("nope", ArrayRecord)
    with pytest.raises(ConfigError, match="must be an ArrayRecord"):
        content["x"] = {"a": 1}  # type: ignore[assignment]


def test_reply_routes_back_to_the_sender() -> None:
    instruction = Message(RecordDict(), dst_node_id=5, message_type="train", group_id="3", run_id=9)
    reply = instruction.reply(RecordDict())

    assert reply.metadata.src_node_id == 5
    assert reply.metadata.dst_node_id == 0
    assert reply.metadata.reply_to_message_id == instruction.metadata.message_id
    assert (reply.metadata.group_id, reply.metadata.run_id) == ("3", 9)
    assert reply.is_reply and not instruction.is_reply


def test_error_reply_has_no_content() -> None:
    instruction = Message(RecordDict(), dst_node_id=1, message_type="evaluate")
    reply = instruction.reply(error=Error(ErrorCode.CLIENT_APP_RAISED, "boom"))
    assert reply.has_error()
    with pytest.raises(ConfigError, match="boom"):
        _ = reply.content
    with pytest.raises(ConfigError, match="exactly one"):
        instruction.reply()


@pytest.mark.parametrize("message_type", ["fit", "train.", "", "trainx"])
def test_message_rejects_unknown_types(message_type: str) -> None:
    with pytest.raises(ConfigError, match="message type"):
        Message(RecordDict(), dst_node_id=1, message_type=message_type)


def test_message_accepts_sub_actions() -> None:
    message = Message(RecordDict(), dst_node_id=1, message_type="query.histogram")
    assert message.metadata.message_type == "query.histogram"


def test_zero_dimensional_arrays_keep_their_shape() -> None:
    assert ArrayRecord({"s": np.float32(2.5)})["s"].shape == ()
    assert ArrayRecord({"s": np.array(3)})["s"].shape == ()


def test_integers_must_fit_in_64_bits() -> None:
    with pytest.raises(ConfigError, match="metric 'big'"):
        MetricRecord({"big": 2**64})
    with pytest.raises(ConfigError, match="config 'big'"):
        ConfigRecord({"big": [1, -(2**63) - 1]})
    assert MetricRecord({"edge": 2**63 - 1})["edge"] == 2**63 - 1


@pytest.mark.parametrize("ttl", [0, -1, float("nan"), float("inf")])
def test_ttl_must_be_positive_and_finite(ttl: float) -> None:
    with pytest.raises(ConfigError, match="ttl"):
        Message(RecordDict(), dst_node_id=1, message_type="train", ttl=ttl)
