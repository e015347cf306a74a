"""NumPy containers: named without copying, loaded into new containers of the same kind."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest

from pollinate.adapters import load_arrays, to_arrays
from pollinate.errors import ConfigError
from pollinate.records import ArrayRecord


class Params(NamedTuple):
    w: np.ndarray
    b: np.ndarray


def test_dict_round_trip_shares_memory_and_leaves_the_template_alone() -> None:
    model = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros(3, np.int64)}
    record = to_arrays(model)
    assert np.shares_memory(record["w"], model["w"])
    new = {"w": np.ones((2, 3), np.float32), "b": np.full(3, 7, np.int64)}
    loaded = load_arrays(model, ArrayRecord(new))
    assert type(loaded) is dict and list(loaded) == ["w", "b"]
    assert loaded["b"].tolist() == [7, 7, 7]
    assert model["b"].tolist() == [0, 0, 0]


@pytest.mark.parametrize("kind", [list, tuple])
def test_sequences_are_named_by_position_and_keep_their_type(kind: type) -> None:
    model = kind([np.zeros(2), np.zeros((1, 2))])
    record = to_arrays(model)
    assert list(record) == ["0", "1"]
    loaded = load_arrays(model, ArrayRecord([np.ones(2), np.ones((1, 2))]))
    assert type(loaded) is kind and float(loaded[1].sum()) == 2.0


def test_named_tuple_keeps_its_type() -> None:
    model = Params(w=np.zeros(2), b=np.zeros(1))
    loaded = load_arrays(model, ArrayRecord([np.ones(2), np.ones(1)]))
    assert isinstance(loaded, Params) and loaded.b.tolist() == [1.0]


def test_array_record_is_returned_as_is_and_loaded_into_a_new_one() -> None:
    record = ArrayRecord({"w": np.zeros(2)})
    assert to_arrays(record) is record
    loaded = load_arrays(record, ArrayRecord({"w": np.ones(2)}))
    assert loaded is not record and loaded["w"].tolist() == [1.0, 1.0]
    assert record["w"].tolist() == [0.0, 0.0]


def test_every_mismatch_is_reported_at_once() -> None:
    model = {"w": np.zeros((2, 3)), "b": np.zeros(3), "s": np.zeros(1, np.float32)}
    wrong = ArrayRecord({"w": np.zeros((3, 2)), "extra": np.zeros(1), "s": np.zeros(1)})
    with pytest.raises(ConfigError) as info:
        load_arrays(model, wrong)
    message = str(info.value)
    assert "missing keys: b" in message
    assert "unexpected keys: extra" in message
    assert "w: model (2, 3), arrays (3, 2)" in message
    assert "s: model float32, arrays float64" in message


def test_loading_something_that_is_not_an_array_record_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="needs an ArrayRecord"):
        load_arrays({"w": np.zeros(1)}, {"w": np.zeros(1)})  # type: ignore[arg-type]


def test_containers_of_non_arrays_are_not_numpy_models() -> None:
    with pytest.raises(ConfigError, match=r"no adapter for a model of type builtins.dict"):
        to_arrays({"w": [1.0, 2.0]})
    with pytest.raises(ConfigError, match="no adapter"):
        to_arrays([])
