"""Node-side helpers for the strategies that need the node's cooperation.

A strategy that needs more than "train and return the model" says so on the wire, with
the keys of :mod:`pollinate.records.keys`; the helpers here do the node's part on
NumPy arrays (a mapping of name to ndarray, as in an ArrayRecord), so they fit any
training loop: convert a framework's tensors with :mod:`pollinate.adapters`, or use the
formulas below directly on tensors. This module imports no ML framework.

**SCAFFOLD** (:class:`~pollinate.strategy.scaffold.Scaffold`; Karimireddy et al., ICML
2020, option II). The instruction carries the server control variate :math:`c` as the
ArrayRecord ``control``; the node keeps its own :math:`c_i` in ``Context.state`` under
:data:`CONTROL_STATE_KEY`::

    x = msg.content[keys.ARRAYS]
    c = msg.content[keys.CONTROL]
    c_i = load_control(context, like=x)
    correction = scaffold_correction(c, c_i)        # c - c_i, fixed for the round
    # ... K local steps: y <- y - lr * (grad(y) + correction)
    c_i_new, delta = scaffold_update_control(c_i, c, x, y, num_steps=K, learning_rate=lr)
    store_control(context, c_i_new)
    # reply: keys.ARRAYS = y, keys.CONTROL_DELTA = delta, metrics with num-examples

**FedNova** (:class:`~pollinate.strategy.fednova.FedNova`): nothing beyond reporting
the number of local optimizer steps taken this round as the metric ``local-steps``
(``keys.LOCAL_STEPS``). A node that stops early (a straggler) reports the steps it
actually took; that is what FedNova normalizes by.

**q-FedAvg** (:class:`~pollinate.strategy.qfedavg.QFedAvg`): nothing beyond reporting
the loss of the received global model, measured on the node's training data *before*
training, as the metric ``initial-loss`` (``keys.INITIAL_LOSS``), and training with
the ``learning-rate`` the config carries (the server's update assumes it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, NamedTuple, TypeAlias

import numpy as np
from numpy.typing import NDArray

from pollinate.errors import ConfigError
from pollinate.records import ArrayRecord, Context

__all__ = [
    "CONTROL_STATE_KEY",
    "ControlUpdate",
    "load_control",
    "scaffold_correction",
    "scaffold_update_control",
    "store_control",
]

#: The ``Context.state`` entry (an ArrayRecord) holding a node's SCAFFOLD control
#: variate :math:`c_i` between rounds.
CONTROL_STATE_KEY: Final = "scaffold-control"

#: Named arrays, as in an ArrayRecord or a dict of name -> ndarray.
Arrays: TypeAlias = Mapping[str, NDArray[Any]]


class ControlUpdate(NamedTuple):
    """A node's new control variate :math:`c_i^+` and the delta it sends back."""

    control: dict[str, NDArray[Any]]
    """:math:`c_i^+`, to store with :func:`store_control`."""
    delta: dict[str, NDArray[Any]]
    """:math:`c_i^+ - c_i`, to reply with as the ArrayRecord ``control-delta``."""


def _check_names(what: str, arrays: Arrays, like: Arrays) -> None:
    """Raise ConfigError unless ``arrays`` has the names and shapes of ``like``."""
    got = [(k, np.shape(v)) for k, v in arrays.items()]
    want = [(k, np.shape(v)) for k, v in like.items()]
    if got != want:
        raise ConfigError(
            f"{what} has arrays {_describe(got)}, expected {_describe(want)} like the model"
        )


def _describe(shapes: list[tuple[str, tuple[int, ...]]]) -> str:
    shown = ", ".join(f"{name}{list(shape)}" for name, shape in shapes[:4])
    return f"[{shown}{', ...' if len(shapes) > 4 else ''}]"


def load_control(context: Context, *, like: Arrays) -> dict[str, NDArray[Any]]:
    """The node's control variate :math:`c_i` from ``context.state``; zeros at first.

    Parameters
    ----------
    context:
        The node's context; :math:`c_i` is read from ``context.state``
        [:data:`CONTROL_STATE_KEY`].
    like:
        The model (or the server control variate): the first time, :math:`c_i` is
        zeros with its names, shapes and dtypes; afterwards the stored :math:`c_i`
        must have its names and shapes.

    Raises
    ------
    ConfigError
        If the stored control variate does not fit ``like`` (the model changed).

    Examples
    --------
    >>> context = Context(run_id=1, node_id=1)
    >>> load_control(context, like={"w": np.ones(2, np.float32)})
    {'w': array([0., 0.], dtype=float32)}
    """
    stored = context.state.get(CONTROL_STATE_KEY)
    if stored is None:
        return {name: np.zeros_like(array) for name, array in like.items()}
    if not isinstance(stored, ArrayRecord):
        raise ConfigError(
            f"context.state[{CONTROL_STATE_KEY!r}] is a {type(stored).__name__}, expected the "
            "ArrayRecord store_control writes"
        )
    _check_names(f"the stored control variate context.state[{CONTROL_STATE_KEY!r}]", stored, like)
    return {name: np.array(array) for name, array in stored.items()}


def store_control(context: Context, control: Arrays) -> None:
    """Keep ``control`` (a copy) as the node's :math:`c_i` in ``context.state``.

    ``context.state`` is the node's persistent state and is updated here; ``control``
    itself is copied, so later in-place changes to it are not stored.

    Examples
    --------
    >>> context = Context(run_id=1, node_id=1)
    >>> store_control(context, {"w": np.ones(2)})
    >>> load_control(context, like={"w": np.zeros(2)})
    {'w': array([1., 1.])}
    """
    context.state[CONTROL_STATE_KEY] = ArrayRecord(
        {name: np.array(array, copy=True) for name, array in control.items()}
    )


def scaffold_correction(server_control: Arrays, node_control: Arrays) -> dict[str, NDArray[Any]]:
    r"""The gradient correction :math:`c - c_i` of SCAFFOLD's local steps.

    Each local step is :math:`y \leftarrow y - \eta_l (g(y) + (c - c_i))`: add the
    correction to every minibatch gradient. It is fixed for the whole round.

    Parameters
    ----------
    server_control:
        :math:`c`, the ArrayRecord ``control`` of the train instruction.
    node_control:
        :math:`c_i`, from :func:`load_control`.

    Examples
    --------
    >>> scaffold_correction({"w": np.array([1.0, 2.0])}, {"w": np.array([0.5, 0.5])})
    {'w': array([0.5, 1.5])}
    """
    _check_names("the node control variate", node_control, server_control)
    return {
        name: np.subtract(c, node_control[name]).astype(np.asarray(c).dtype, copy=False)
        for name, c in server_control.items()
    }


def scaffold_update_control(
    node_control: Arrays,
    server_control: Arrays,
    initial: Arrays,
    trained: Arrays,
    *,
    num_steps: int,
    learning_rate: float,
) -> ControlUpdate:
    r"""SCAFFOLD's option II control update, and the delta to send to the server.

    Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated
    Learning", ICML 2020, https://arxiv.org/abs/1910.06378, Algorithm 1 line 12:

    .. math::

        c_i^+ = c_i - c + \frac{x - y_i}{K \eta_l}, \qquad \Delta c_i = c_i^+ - c_i

    Results have the dtypes of ``server_control`` (so they travel like the server's).

    Parameters
    ----------
    node_control:
        :math:`c_i` before this round (from :func:`load_control`).
    server_control:
        :math:`c`, as received this round.
    initial:
        :math:`x`, the global model as received.
    trained:
        :math:`y_i`, the model after the local steps.
    num_steps:
        :math:`K`, the local steps taken (>= 1).
    learning_rate:
        :math:`\eta_l`, the local step size (> 0).

    Examples
    --------
    >>> update = scaffold_update_control(
    ...     {"w": np.array([1.0])}, {"w": np.array([0.5])},
    ...     {"w": np.array([2.0])}, {"w": np.array([1.0])}, num_steps=2, learning_rate=0.25)
    >>> update.control, update.delta  # 1 - 0.5 + (2 - 1) / 0.5 = 2.5
    ({'w': array([2.5])}, {'w': array([1.5])})
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ConfigError(f"num_steps must be an int >= 1, got {num_steps!r}")
    if (
        isinstance(learning_rate, bool)
        or not isinstance(learning_rate, (int, float))
        or not 0 < learning_rate < float("inf")
    ):
        raise ConfigError(f"learning_rate must be a finite number > 0, got {learning_rate!r}")
    for what, arrays in (
        ("the node control variate", node_control),
        ("the initial model", initial),
        ("the trained model", trained),
    ):
        _check_names(what, arrays, server_control)
    scale = 1.0 / (num_steps * float(learning_rate))
    control: dict[str, NDArray[Any]] = {}
    delta: dict[str, NDArray[Any]] = {}
    for name, c in server_control.items():
        dtype = np.asarray(c).dtype
        c_i = np.asarray(node_control[name], np.float64)
        drift = np.subtract(initial[name], trained[name], dtype=np.float64)
        new = c_i - np.asarray(c, np.float64) + scale * drift
        control[name] = new.astype(dtype, copy=False)
        delta[name] = (new - c_i).astype(dtype, copy=False)
    return ControlUpdate(control, delta)
