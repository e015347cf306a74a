"""JAX pytrees: key-path names, a new pytree of the same structure on load."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pollinate.adapters import JaxAdapter, load_arrays, to_arrays
from pollinate.errors import ConfigError
from pollinate.records import ArrayRecord

pytestmark = pytest.mark.imports_jax  # see tests/conftest.py


class Layer(NamedTuple):
    w: jax.Array
    b: jax.Array


def _params() -> dict[str, object]:
    key = jax.random.PRNGKey(0)
    return {
        "dense": Layer(w=jax.random.normal(key, (3, 2)), b=jnp.zeros(2)),
        "blocks": [jnp.ones((2,)), jnp.arange(4, dtype=jnp.int32)],
        "scale": np.float32(1.5) * np.ones(1, np.float32),
    }


def test_names_are_key_paths_and_dtypes_are_kept() -> None:
    record = to_arrays(_params())
    assert list(record) == ["blocks.0", "blocks.1", "dense.w", "dense.b", "scale"]
    assert record["blocks.1"].dtype == np.int32
    assert record["dense.w"].shape == (3, 2)


def test_same_structure_gives_the_same_names() -> None:
    assert list(to_arrays(_params())) == list(to_arrays(jax.tree.map(jnp.zeros_like, _params())))


def test_load_returns_a_new_tree_of_the_same_structure_and_leaf_kinds() -> None:
    template = _params()
    record = ArrayRecord({name: np.full_like(a, 2) for name, a in to_arrays(template).items()})
    loaded = load_arrays(template, record)
    assert jax.tree.structure(loaded) == jax.tree.structure(template)
    assert isinstance(loaded["dense"], Layer)
    assert isinstance(loaded["dense"].w, jax.Array)
    assert isinstance(loaded["scale"], np.ndarray)  # NumPy leaves stay NumPy
    assert float(loaded["dense"].w.sum()) == 12.0
    assert float(template["dense"].b.sum()) == 0.0  # type: ignore[attr-defined]


def test_round_trip_is_exact() -> None:
    template = _params()
    loaded = load_arrays(jax.tree.map(jnp.zeros_like, template), to_arrays(template))
    for a, b in zip(jax.tree.leaves(template), jax.tree.leaves(loaded), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_shape_and_key_mismatches_are_all_reported() -> None:
    record = to_arrays(_params()).copy()
    record["dense.w"] = np.zeros((2, 3), np.float32)
    del record["scale"]
    with pytest.raises(ConfigError) as info:
        load_arrays(_params(), record)
    message = str(info.value)
    assert "JAX pytree" in message
    assert "missing keys: scale" in message
    assert "dense.w: model (3, 2), arrays (2, 3)" in message


def test_colliding_names_are_an_error() -> None:
    with pytest.raises(ConfigError, match=r"both named 'a.b'"):
        to_arrays({"a.b": jnp.zeros(1), "a": {"b": jnp.zeros(1)}})


def test_bfloat16_leaves_cannot_travel() -> None:
    with pytest.raises(ConfigError, match="'w' has dtype bfloat16"):
        to_arrays({"w": jnp.zeros(2, jnp.bfloat16)})


def test_non_array_leaves_are_refused() -> None:
    adapter = JaxAdapter()
    assert not adapter.supports({"w": jnp.zeros(1), "name": "dense"})
    with pytest.raises(ConfigError, match="leaf 'name' is a str"):
        adapter.to_arrays({"w": jnp.zeros(1), "name": "dense"})


def test_a_single_array_is_a_pytree() -> None:
    record = to_arrays(jnp.arange(3.0))
    assert list(record) == ["value"]
    assert load_arrays(jnp.zeros(3), record).tolist() == [0.0, 1.0, 2.0]
