"""Node-side FedProx: the proximal term for training loops, and simulated stragglers.

FedProx (Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020,
https://arxiv.org/abs/1812.06127) has node ``k`` minimize
``h_k(w; w^t) = F_k(w) + mu/2 * ||w - w^t||^2`` instead of its local loss ``F_k``,
where ``w^t`` is the global model of the round and ``mu`` arrives in the train
instruction's config as ``proximal-mu`` (:class:`pollinate.strategy.fedprox.FedProx`
sends it). The helpers here add that term to a training loop:

- NumPy loops add :func:`proximal_gradient` (``mu * (w - w^t)``) to each step's
  gradient and may report :func:`proximal_term` (``mu/2 * ||w - w^t||^2``);
- PyTorch loops add :func:`torch_proximal_term` to the loss before ``backward()``.

Stragglers (Section 5.2 of the paper) are devices that finish only part of the asked
local work: a random 1 to E-1 of the E asked epochs. FedAvg drops their replies,
FedProx keeps them; a node tells which it is by reporting the ``completed-fraction``
metric (``keys.COMPLETED_FRACTION``). :func:`straggler_work` computes how many epochs
to run and that fraction; :func:`simulated_straggler_work` decides from the node's
simulation profile whether the node straggles in a round.

node_config keys read here
--------------------------
``sim-straggler-p`` (:data:`STRAGGLER_P`)
    Probability in [0, 1] that the node is a straggler in a given round (absent: 0).
    The draw comes from a generator seeded by ``(seed, node_id, server_round)`` with
    a stream of its own, so a seeded run picks the same stragglers in every
    repetition, on every runtime and for every strategy compared on it, and the
    draw is independent of the ``sim-*`` draws of :mod:`pollinate.runtime.profiles`.

Nothing here imports PyTorch until :func:`torch_proximal_term` runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np
from numpy.typing import NDArray

from pollinate.errors import ConfigError
from pollinate.records import ConfigValue

if TYPE_CHECKING:
    import torch  # type: ignore[import-not-found, unused-ignore]

__all__ = [
    "STRAGGLER_P",
    "LocalWork",
    "proximal_gradient",
    "proximal_term",
    "simulated_straggler_work",
    "straggler_work",
    "torch_proximal_term",
]

#: node_config key: probability that the node straggles in a given round.
STRAGGLER_P: Final = "sim-straggler-p"
#: Separates the straggler draw from other draws seeded by (seed, node, round).
_STRAGGLER_STREAM: Final = 0x5354_5247


def _check_mu(mu: object) -> float:
    """Return ``mu`` as a float >= 0, else raise ConfigError."""
    if (
        isinstance(mu, bool)
        or not isinstance(mu, (int, float, np.integer, np.floating))
        or not math.isfinite(float(mu))
        or float(mu) < 0
    ):
        raise ConfigError(f"the proximal weight mu must be a finite number >= 0, got {mu!r}")
    return float(mu)


def _paired(
    params: Mapping[str, NDArray[Any]], global_params: Mapping[str, NDArray[Any]]
) -> list[tuple[str, NDArray[Any], NDArray[Any]]]:
    """``(name, w, w_t)`` for every parameter; raise ConfigError on mismatched models."""
    if params.keys() != global_params.keys():
        missing = sorted(set(params) - set(global_params))
        extra = sorted(set(global_params) - set(params))
        raise ConfigError(
            "params and global_params must name the same arrays; "
            f"missing from global_params: {missing}, only in global_params: {extra}"
        )
    pairs = []
    for name, value in params.items():
        w, w_t = np.asarray(value), np.asarray(global_params[name])
        if w.shape != w_t.shape:
            raise ConfigError(
                f"array {name!r} has shape {w.shape} but the global model's has {w_t.shape}"
            )
        pairs.append((name, w, w_t))
    return pairs


def proximal_gradient(
    params: Mapping[str, NDArray[Any]],
    global_params: Mapping[str, NDArray[Any]],
    mu: float,
) -> dict[str, NDArray[Any]]:
    """The gradient of the proximal term, ``mu * (w - w_t)``, per array.

    Add it to the local loss's gradient in every step of a NumPy training loop
    (Li et al., MLSys 2020, Algorithm 2; the reference code's
    ``PerturbedGradientDescent`` step is ``w -= lr * (grad + mu * (w - w_t))``).

    Parameters
    ----------
    params:
        The node's current parameters ``w`` (e.g. a dict or an ArrayRecord).
    global_params:
        The global model ``w_t`` received this round, with the same names and shapes.
    mu:
        The proximal weight, ``>= 0`` (the ``proximal-mu`` config value).

    Returns
    -------
    dict
        New arrays, one per name of ``params``; the inputs are not modified.

    Examples
    --------
    >>> w = {"w": np.array([1.0, 2.0])}
    >>> w_t = {"w": np.array([0.0, 4.0])}
    >>> proximal_gradient(w, w_t, 0.5)["w"]
    array([ 0.5, -1. ])
    """
    mu = _check_mu(mu)
    return {name: mu * (w - w_t) for name, w, w_t in _paired(params, global_params)}


def proximal_term(
    params: Mapping[str, NDArray[Any]],
    global_params: Mapping[str, NDArray[Any]],
    mu: float,
) -> float:
    """The value of the proximal term, ``mu/2 * ||w - w_t||^2`` over all arrays.

    Add it to the local loss when reporting the value of the FedProx objective
    ``h_k``. Parameters as for :func:`proximal_gradient`.

    Examples
    --------
    >>> w = {"w": np.array([1.0, 2.0]), "b": np.array([3.0])}
    >>> w_t = {"w": np.array([0.0, 4.0]), "b": np.array([3.0])}
    >>> proximal_term(w, w_t, 0.5)
    1.25
    """
    mu = _check_mu(mu)
    squared = sum(
        float(np.sum(np.square(w - w_t, dtype=np.float64)))
        for _, w, w_t in _paired(params, global_params)
    )
    return 0.5 * mu * squared


def torch_proximal_term(
    model: torch.nn.Module,
    global_params: Mapping[str, NDArray[Any] | torch.Tensor],
    mu: float,
) -> torch.Tensor:
    """The proximal term ``mu/2 * ||w - w_t||^2`` as a PyTorch scalar to add to the loss.

    Call it in every step, after the forward pass and before ``backward()``::

        loss = criterion(model(x), y) + torch_proximal_term(model, global_params, mu)
        loss.backward()

    Its gradient with respect to each parameter is ``mu * (w - w_t)``; ``w_t`` is a
    constant (no gradient flows into it). Only parameters with ``requires_grad``
    count; keys of ``global_params`` that are no parameter (buffers of a
    ``state_dict``, e.g. batch-norm statistics) are ignored.

    Parameters
    ----------
    model:
        The module being trained.
    global_params:
        The global model received this round, by parameter name
        (``model.named_parameters()``): NumPy arrays (e.g. an ArrayRecord) or tensors.
    mu:
        The proximal weight, ``>= 0``.

    Raises
    ------
    ImportError
        PyTorch is not installed (``pip install torch``).
    ConfigError
        A trainable parameter is missing from ``global_params`` or has another shape.

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Linear(2, 1)
    >>> w_t = {name: p.detach().numpy() + 1.0 for name, p in model.named_parameters()}
    >>> term = torch_proximal_term(model, w_t, 0.5)  # 3 parameters, each 1 away
    >>> round(term.item(), 4)
    0.75
    """
    try:
        import torch  # type: ignore[import-not-found, unused-ignore]
    except ImportError as exc:
        raise ImportError(
            "torch_proximal_term needs PyTorch, which is not installed: pip install torch"
        ) from exc
    mu = _check_mu(mu)
    squares = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name not in global_params:
            raise ConfigError(
                f"global_params has no {name!r}; it must hold every trainable parameter "
                f"of the model (by name from named_parameters()), got {sorted(global_params)}"
            )
        reference = torch.as_tensor(global_params[name], dtype=param.dtype, device=param.device)
        if reference.shape != param.shape:
            raise ConfigError(
                f"parameter {name!r} has shape {tuple(param.shape)} but the global model's "
                f"has {tuple(reference.shape)}"
            )
        squares.append(torch.sum(torch.square(param - reference.detach())))
    if not squares:
        return torch.zeros(())
    total: torch.Tensor = torch.stack(squares).sum()
    return (mu / 2.0) * total


@dataclass(frozen=True)
class LocalWork:
    """How many local epochs a node runs this round, out of how many were asked.

    Examples
    --------
    >>> LocalWork(epochs=5, asked_epochs=20).completed_fraction
    0.25
    """

    epochs: int
    asked_epochs: int

    def __post_init__(self) -> None:
        if not 0 <= self.epochs <= self.asked_epochs:
            raise ConfigError(
                f"LocalWork: epochs must be within [0, asked_epochs={self.asked_epochs}], "
                f"got {self.epochs}"
            )

    @property
    def completed_fraction(self) -> float:
        """The share of the asked work done: report it as ``keys.COMPLETED_FRACTION``."""
        return self.epochs / self.asked_epochs if self.asked_epochs else 1.0

    @property
    def partial(self) -> bool:
        """Whether this is partial work (FedAvg drops it, FedProx keeps it)."""
        return self.epochs < self.asked_epochs


def _check_epochs(num_epochs: object) -> int:
    if isinstance(num_epochs, bool) or not isinstance(num_epochs, (int, np.integer)):
        raise ConfigError(f"num_epochs must be an integer >= 1, got {num_epochs!r}")
    if num_epochs < 1:
        raise ConfigError(f"num_epochs must be an integer >= 1, got {num_epochs!r}")
    return int(num_epochs)


def straggler_work(num_epochs: int, *, straggler: bool, rng: np.random.Generator) -> LocalWork:
    """The local work of a node asked for ``num_epochs`` epochs.

    A straggler runs a uniformly random number of epochs in ``1 .. num_epochs - 1``
    (Li et al., MLSys 2020, Section 5.2; the reference code draws
    ``np.random.randint(1, E)``); any other node runs all ``num_epochs``. With
    ``num_epochs == 1`` a straggler cannot do less and runs the one epoch.

    Examples
    --------
    >>> work = straggler_work(20, straggler=True, rng=np.random.default_rng(0))
    >>> 1 <= work.epochs <= 19, work.partial
    (True, True)
    >>> straggler_work(20, straggler=False, rng=np.random.default_rng(0)).completed_fraction
    1.0
    """
    num_epochs = _check_epochs(num_epochs)
    if not straggler or num_epochs == 1:
        return LocalWork(epochs=num_epochs, asked_epochs=num_epochs)
    return LocalWork(epochs=int(rng.integers(1, num_epochs)), asked_epochs=num_epochs)


def simulated_straggler_work(
    num_epochs: int,
    node_config: Mapping[str, ConfigValue],
    *,
    seed: int,
    node_id: int,
    server_round: int,
) -> LocalWork:
    """The local work of a simulated node whose node_config may make it a straggler.

    The node straggles in ``server_round`` with probability ``sim-straggler-p`` of its
    node_config (see the module docstring); then it runs a random 1 to E-1 epochs
    (:func:`straggler_work`). Every draw comes from ``(seed, node_id, server_round)``,
    so strategies compared on the same seeded run meet the same stragglers doing the
    same number of epochs.

    Parameters
    ----------
    num_epochs:
        Epochs asked for (E), e.g. the ``local-epochs`` config value.
    node_config:
        The node's ``Context.node_config``.
    seed:
        The run's seed (e.g. the ``seed`` run_config value).
    node_id, server_round:
        Who and when (``Context.node_id``, the ``server-round`` config value).

    Examples
    --------
    >>> work = simulated_straggler_work(20, {"sim-straggler-p": 1.0}, seed=0, node_id=3,
    ...                                 server_round=1)
    >>> work.partial
    True
    >>> simulated_straggler_work(20, {}, seed=0, node_id=3, server_round=1).partial
    False
    """
    num_epochs = _check_epochs(num_epochs)
    probability = node_config.get(STRAGGLER_P, 0.0)
    if (
        isinstance(probability, bool)
        or not isinstance(probability, (int, float))
        or not 0.0 <= probability <= 1.0
    ):
        raise ConfigError(
            f"node_config {STRAGGLER_P}={probability!r} must be a number within [0, 1]"
        )
    for name, value in (("seed", seed), ("node_id", node_id), ("server_round", server_round)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
    rng = np.random.default_rng([int(seed), int(node_id), int(server_round), _STRAGGLER_STREAM])
    straggler = bool(rng.random() < probability)
    return straggler_work(num_epochs, straggler=straggler, rng=rng)
