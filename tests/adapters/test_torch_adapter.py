"""PyTorch modules: the whole state_dict, zero-copy on the CPU, strict loading."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from pollinate.adapters import TorchAdapter, load_arrays, to_arrays
from pollinate.errors import ConfigError
from pollinate.records import ArrayRecord, RecordDict
from pollinate.serde import recorddict_from_bytes, recorddict_to_bytes


def _net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 6 * 6, 3),
    )


def test_state_dict_with_buffers_and_dtypes_is_kept() -> None:
    net = _net(0)
    net(torch.randn(5, 1, 8, 8))  # updates the batch-norm running statistics
    record = to_arrays(net)
    assert list(record) == list(net.state_dict())
    assert record["1.num_batches_tracked"].dtype == np.int64
    assert int(record["1.num_batches_tracked"]) == 1
    assert record["3.weight"].dtype == np.float32 and record["3.weight"].shape == (3, 144)
    assert not np.allclose(record["1.running_mean"], 0.0)


def test_to_arrays_shares_the_module_memory_on_cpu() -> None:
    net = torch.nn.Linear(3, 2)
    record = to_arrays(net)
    assert np.shares_memory(record["weight"], net.weight.detach().numpy())
    with torch.no_grad():
        net.bias.fill_(5.0)
    assert record["bias"].tolist() == [5.0, 5.0]  # a live view, as documented


def test_load_round_trip_restores_outputs_exactly() -> None:
    source, target = _net(0), _net(1)
    source.train()
    source(torch.randn(5, 1, 8, 8))
    record = to_arrays(source).copy()
    loaded = load_arrays(target, record)
    assert loaded is target
    x = torch.randn(2, 1, 8, 8)
    source.eval()
    target.eval()
    assert torch.equal(source(x), target(x))
    assert int(target.state_dict()["1.num_batches_tracked"]) == 1


def test_loading_read_only_arrays_from_the_wire_works_without_warnings() -> None:
    source, target = torch.nn.Linear(4, 2), torch.nn.Linear(4, 2)
    received = ArrayRecord({k: v.copy() for k, v in to_arrays(source).items()})
    for array in received.values():
        array.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_arrays(target, received)
    assert torch.equal(source.weight, target.weight)


def test_strict_load_lists_missing_unexpected_shapes_and_dtypes() -> None:
    record = to_arrays(torch.nn.Linear(3, 2)).copy()
    del record["bias"]
    record["weight"] = np.zeros((2, 4), np.float32)
    record["extra"] = np.zeros(1, np.float32)
    target = torch.nn.Linear(3, 2)
    before = target.weight.detach().clone()
    with pytest.raises(ConfigError) as info:
        load_arrays(target, record)
    message = str(info.value)
    assert "Linear (torch.nn.Module)" in message
    assert "missing keys: bias" in message
    assert "unexpected keys: extra" in message
    assert "weight: model (2, 3), arrays (2, 4)" in message
    assert torch.equal(target.weight, before)  # nothing was loaded

    record = to_arrays(torch.nn.Linear(3, 2)).copy()
    record["weight"] = record["weight"].astype(np.float64)
    with pytest.raises(ConfigError, match="weight: model float32, arrays float64"):
        load_arrays(torch.nn.Linear(3, 2), record)


def test_bfloat16_is_an_error_by_default_and_upcast_on_request() -> None:
    net = torch.nn.Linear(2, 2).to(torch.bfloat16)
    with pytest.raises(ConfigError, match=r"'weight' is bfloat16.*upcast_bfloat16=True"):
        to_arrays(net)
    adapter = TorchAdapter(upcast_bfloat16=True)
    record = adapter.to_arrays(net)
    assert record["weight"].dtype == np.float32
    assert np.array_equal(record["weight"], net.weight.float().detach().numpy())
    target = torch.nn.Linear(2, 2).to(torch.bfloat16)
    adapter.load_arrays(target, record)
    assert target.weight.dtype == torch.bfloat16 and torch.equal(target.weight, net.weight)


def test_complex_tensors_cannot_travel() -> None:
    net = torch.nn.Module()
    net.register_buffer("phase", torch.zeros(2, dtype=torch.complex64))
    with pytest.raises(ConfigError, match="'phase' is a complex64 tensor"):
        to_arrays(net)


def test_round_trip_through_the_wire_format() -> None:
    source, target = _net(0), _net(1)
    payload = recorddict_to_bytes(RecordDict({"arrays": to_arrays(source)}))
    received = recorddict_from_bytes(payload)["arrays"]
    assert isinstance(received, ArrayRecord)
    load_arrays(target, received)
    for name, value in source.state_dict().items():
        assert torch.equal(value, target.state_dict()[name]), name


def test_adapter_refuses_what_is_not_a_module() -> None:
    with pytest.raises(ConfigError, match=r"TorchAdapter handles torch.nn.Module, got list"):
        TorchAdapter().to_arrays([1])
