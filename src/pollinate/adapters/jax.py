"""JAX models: any pytree of arrays (dicts, lists, tuples, registered nodes) <-> ArrayRecord.

Design note. JAX models are pytrees, and pytrees are immutable by convention, so
``load_arrays`` returns a *new* pytree with the same structure and leaves of the same
kinds (JAX arrays stay JAX arrays, NumPy arrays stay NumPy arrays); the template is
only read.

Names are the leaves' key paths joined by ``"."``: ``{"dense": {"w": ...}}`` gives
``"dense.w"``, the second element of a list under ``"layers"`` gives ``"layers.1"``,
an attribute gives its name. The names are stable for a given tree structure (dict
keys are visited in sorted order, as ``jax.tree_util`` does) and two trees of the
same structure give the same names, so the server and the nodes agree. Two paths
that join to the same name (a key that contains ``"."``) are an error, not a silent
overwrite.

``to_arrays`` reads JAX arrays with ``np.asarray``, which shares memory with arrays on
the CPU. bfloat16 leaves cannot travel (NumPy has no such dtype): cast the tree
first (``jax.tree.map(lambda a: a.astype(jnp.float32), params)``).

JAX is imported only when a pytree holding JAX arrays is converted; install it with
``pip install 'pollinate[jax]'``.
"""

from __future__ import annotations

import sys
from typing import Any, TypeVar, cast, final

import numpy as np

from pollinate.adapters._base import ArraySpec, check_arrays_match, import_framework
from pollinate.errors import ConfigError
from pollinate.records import SUPPORTED_DTYPES, ArrayRecord

__all__ = ["JaxAdapter", "key_path_name"]

_M = TypeVar("_M")

_INSTALL_HINT = "pip install 'pollinate[jax]'"


def _jax() -> Any:
    return import_framework("jax", install_hint=_INSTALL_HINT)


def key_path_name(path: tuple[Any, ...]) -> str:
    """The record name of a leaf: its ``jax.tree_util`` key path entries joined by ``"."``.

    Examples
    --------
    >>> import jax
    >>> tree = {"dense": {"w": 1.0}, "layers": [2.0, 3.0]}
    >>> [key_path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    ['dense.w', 'layers.0', 'layers.1']
    """
    parts = []
    for entry in path:
        for attribute in ("key", "idx", "name"):  # DictKey / FlattenedIndexKey, Sequence, GetAttr
            if hasattr(entry, attribute):
                parts.append(str(getattr(entry, attribute)))
                break
        else:
            parts.append(str(entry))
    return ".".join(parts) if parts else "value"


def _is_leaf_array(jax: Any, leaf: object) -> bool:
    return isinstance(leaf, (jax.Array, np.ndarray, np.generic, int, float, bool))


@final
class JaxAdapter:
    """The adapter for pytrees whose leaves are arrays, at least one a JAX array.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
    >>> adapter = JaxAdapter()
    >>> record = adapter.to_arrays(params)
    >>> list(record), record["w"].shape
    (['b', 'w'], (2, 3))
    >>> new = adapter.load_arrays(params, record)
    >>> type(new) is dict and bool((new["w"] == params["w"]).all())
    True
    """

    @property
    def name(self) -> str:
        """What this adapter handles."""
        return "JAX pytree of arrays"

    def supports(self, model: object) -> bool:
        """Pytrees with at least one ``jax.Array`` leaf and only array-like leaves."""
        jax = sys.modules.get("jax")
        if jax is None:
            return False
        if isinstance(model, jax.Array):
            return True
        leaves = jax.tree_util.tree_leaves(model)
        return any(isinstance(leaf, jax.Array) for leaf in leaves) and all(
            _is_leaf_array(jax, leaf) for leaf in leaves
        )

    def _named_leaves(self, model: object) -> tuple[list[tuple[str, Any]], Any]:
        """``[(name, leaf)]`` in flattening order, and the tree definition."""
        jax = _jax()
        with_paths, treedef = jax.tree_util.tree_flatten_with_path(model)
        named: list[tuple[str, Any]] = []
        seen: set[str] = set()
        for path, leaf in with_paths:
            name = key_path_name(path)
            if name in seen:
                raise ConfigError(
                    f"two leaves of the pytree are both named {name!r} (a key contains "
                    "'.'); rename the keys so their paths stay distinct"
                )
            if not _is_leaf_array(jax, leaf):
                raise ConfigError(
                    f"pytree leaf {name!r} is a {type(leaf).__name__}, not an array; "
                    "only arrays and numbers can be sent"
                )
            seen.add(name)
            named.append((name, leaf))
        if not named:
            raise ConfigError("the pytree has no leaves: there is nothing to send")
        return named, treedef

    def to_arrays(self, model: Any) -> ArrayRecord:
        """The pytree's leaves by key-path name, as NumPy views where possible."""
        named, _ = self._named_leaves(model)
        arrays = {}
        for name, leaf in named:
            array = np.asarray(leaf)
            if array.dtype.name not in SUPPORTED_DTYPES:
                raise ConfigError(
                    f"pytree leaf {name!r} has dtype {array.dtype.name}, which cannot "
                    f"travel; cast it to one of {', '.join(SUPPORTED_DTYPES)} first"
                )
            arrays[name] = array
        return ArrayRecord(arrays)

    def load_arrays(self, model: _M, arrays: ArrayRecord) -> _M:
        """A new pytree shaped like ``model`` with leaves from ``arrays`` (strictly checked)."""
        jax = _jax()
        named, treedef = self._named_leaves(model)
        expected: dict[str, ArraySpec] = {}
        for name, leaf in named:
            array = np.asarray(leaf) if not isinstance(leaf, jax.Array) else leaf
            expected[name] = (np.dtype(array.dtype).name, tuple(np.shape(array)))
        check_arrays_match(f"{type(model).__name__} (JAX pytree)", expected, arrays)
        leaves = [
            jax.numpy.asarray(arrays[name]) if isinstance(leaf, jax.Array) else arrays[name]
            for name, leaf in named
        ]
        return cast(_M, jax.tree_util.tree_unflatten(treedef, leaves))
