r"""Server optimizers and the FedOpt family: FedAvgM, FedAdam, FedYogi, FedAdagrad.

Reddi et al., "Adaptive Federated Optimization", ICLR 2021,
https://arxiv.org/abs/2003.00295, treat the round's aggregate as one step of a
server-side optimizer: with the global model :math:`x_t` and the nodes' aggregated
model :math:`\bar{y}_t`, the *pseudo-gradient* is :math:`x_t - \bar{y}_t`, and the
paper's Algorithm 2 writes its update with :math:`\Delta_t = \bar{y}_t - x_t` (minus
the pseudo-gradient). Each optimizer here is written once, as a
:class:`~pollinate.strategy.optimizer.ServerOptimizer`, and composed into
:class:`~pollinate.strategy.FedAvg`; the strategies below are FedAvg with an optimizer
and nothing else.

Arithmetic runs in float64 whatever the model's dtype (squared updates underflow in
float16), and the optimizers' state (moments) is kept in float64 ArrayRecords held as
public attributes, so a wrapper (DP, checkpointing) sees all of it. Each step replaces
those records with new ones; nothing is updated in place, neither the inputs nor a
record a caller may still hold.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, final

import numpy as np
from numpy.typing import NDArray

from pollinate.errors import AggregationError, ConfigError
from pollinate.records import ArrayRecord
from pollinate.strategy.aggregate import cast_like, describe_structure
from pollinate.strategy.fedavg import FedAvg

if TYPE_CHECKING:
    from typing import Unpack  # Python 3.11; annotations only, never evaluated

    from pollinate.strategy.fedavg import FedAvgKwargs

__all__ = [
    "Adagrad",
    "Adam",
    "FedAdagrad",
    "FedAdam",
    "FedAvgM",
    "FedYogi",
    "ServerSGD",
    "Yogi",
]

_F64 = NDArray[np.float64]


# -- validation and arithmetic helpers --------------------------------------------------
def _check_positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{name} must be a positive number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be finite, got {value!r}")
    return float(value)


def _check_decay(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"{name} must be within [0, 1), got {value!r}")
    return float(value)


def _delta(current: ArrayRecord, aggregate: ArrayRecord) -> dict[str, _F64]:
    """``aggregate - current`` per array, in float64 (Reddi et al.'s Delta_t)."""
    if aggregate.structure() != current.structure():
        raise AggregationError(
            f"the aggregate has arrays {describe_structure(aggregate.structure())}, but the "
            f"global model has {describe_structure(current.structure())}; a server optimizer "
            "needs both to have the same structure"
        )
    return {
        name: np.subtract(aggregate[name], array, dtype=np.float64)
        for name, array in current.items()
    }


def _state_like(
    state: ArrayRecord | None, current: ArrayRecord, fill: float, name: str
) -> ArrayRecord:
    """``state``, or a new float64 record shaped like ``current`` filled with ``fill``."""
    shapes = [(key, array.shape) for key, array in current.items()]
    if state is None:
        return ArrayRecord({key: np.full(shape, fill, np.float64) for key, shape in shapes})
    if [(key, array.shape) for key, array in state.items()] != shapes:
        raise AggregationError(
            f"the optimizer's {name} has arrays {describe_structure(state.structure())}, but the "
            f"global model has {describe_structure(current.structure())}; reset the optimizer's "
            "state (set its ArrayRecord attributes to None) before using it with another model"
        )
    return state


def _apply(current: ArrayRecord, update: Callable[[str], _F64]) -> ArrayRecord:
    """``current + update(name)`` per array, cast back to each array's dtype."""
    out = ArrayRecord()
    for name, array in current.items():
        out[name] = cast_like(np.add(array, update(name), dtype=np.float64), array.dtype)
    return out


# -- optimizers ---------------------------------------------------------------------------
@final
class ServerSGD:
    r"""SGD on the pseudo-gradient, with optional (Nesterov) momentum.

    With ``momentum`` > 0 this is FedAvgM: Hsu, Qi and Brown, "Measuring the Effects of
    Non-Identical Data Distribution for Federated Visual Classification", 2019,
    https://arxiv.org/abs/1909.06335. With ``g_t = x_t - aggregate_t``:

    .. math::

        v_t = \beta v_{t-1} + g_t, \qquad
        x_{t+1} = x_t - \eta\, v_t
        \quad (\text{Nesterov: } x_{t+1} = x_t - \eta\,(g_t + \beta v_t))

    with :math:`v_{-1} = 0`, so the first step is plain SGD. ``learning_rate=1`` and
    ``momentum=0`` give FedAvg exactly (the next model is the aggregate).

    Parameters
    ----------
    learning_rate:
        The server learning rate :math:`\eta` (> 0).
    momentum:
        The server momentum :math:`\beta`, within [0, 1).
    nesterov:
        Use Nesterov momentum (as ``torch.optim.SGD`` does); needs ``momentum`` > 0.

    Attributes
    ----------
    velocity:
        The momentum buffer :math:`v_t` (float64), ``None`` before the first step or
        without momentum.

    Examples
    --------
    >>> opt = ServerSGD(learning_rate=1.0, momentum=0.9)
    >>> x = ArrayRecord({"w": np.array([1.0])})
    >>> opt.step(x, ArrayRecord({"w": np.array([0.0])}))["w"]  # v = 1, x = 1 - 1
    array([0.])
    >>> opt.velocity["w"]
    array([1.])
    """

    def __init__(
        self, learning_rate: float = 1.0, momentum: float = 0.0, nesterov: bool = False
    ) -> None:
        self.learning_rate = _check_positive("learning_rate", learning_rate)
        self.momentum = _check_decay("momentum", momentum)
        if nesterov and self.momentum == 0.0:
            raise ConfigError("nesterov=True needs a momentum > 0, got momentum=0")
        self.nesterov = bool(nesterov)
        self.velocity: ArrayRecord | None = None

    def step(self, current: ArrayRecord, aggregate: ArrayRecord) -> ArrayRecord:
        """``current - learning_rate * v`` with the momentum buffer ``v`` updated."""
        delta = _delta(current, aggregate)  # = -g_t
        lr, beta = self.learning_rate, self.momentum
        if beta == 0.0:
            return _apply(current, lambda name: lr * delta[name])
        old = _state_like(self.velocity, current, 0.0, "velocity")
        velocity = ArrayRecord({name: beta * old[name] - delta[name] for name in delta})
        self.velocity = velocity
        if self.nesterov:
            return _apply(current, lambda name: lr * (delta[name] - beta * velocity[name]))
        return _apply(current, lambda name: -lr * velocity[name])

    def __repr__(self) -> str:
        return (
            f"ServerSGD(learning_rate={self.learning_rate}, momentum={self.momentum}, "
            f"nesterov={self.nesterov})"
        )


class _Adaptive:
    """The common part of Algorithm 2: first moment, preconditioned step."""

    def __init__(self, eta: float, beta_1: float, tau: float) -> None:
        self.eta = _check_positive("eta", eta)
        self.beta_1 = _check_decay("beta_1", beta_1)
        self.tau = _check_positive("tau", tau)
        #: First moment :math:`m_t` (float64); ``None`` stands for :math:`m_{-1} = 0`.
        self.m: ArrayRecord | None = None
        #: Second moment :math:`v_t` (float64); ``None`` stands for :math:`v_{-1} = \tau^2`.
        self.v: ArrayRecord | None = None

    def _second_moment(self, v: _F64, delta_sq: _F64) -> _F64:
        raise NotImplementedError

    def step(self, current: ArrayRecord, aggregate: ArrayRecord) -> ArrayRecord:
        """One step of Reddi et al.'s Algorithm 2 (formulas in the class docstring)."""
        delta = _delta(current, aggregate)
        m_old = _state_like(self.m, current, 0.0, "m")
        v_old = _state_like(self.v, current, self.tau**2, "v")
        b1 = self.beta_1
        m = ArrayRecord({k: b1 * m_old[k] + (1.0 - b1) * d for k, d in delta.items()})
        v = ArrayRecord({k: self._second_moment(v_old[k], d * d) for k, d in delta.items()})
        self.m, self.v = m, v
        return _apply(current, lambda k: self.eta * m[k] / (np.sqrt(v[k]) + self.tau))

    def __repr__(self) -> str:
        names = ("eta", "beta_1", "beta_2", "tau")
        fields = ", ".join(f"{k}={getattr(self, k)}" for k in names if hasattr(self, k))
        return f"{type(self).__name__}({fields})"


@final
class Adam(_Adaptive):
    r"""Adam on the server (FedAdam).

    Reddi et al., "Adaptive Federated Optimization", ICLR 2021, Algorithm 2,
    https://arxiv.org/abs/2003.00295. With :math:`\Delta_t = \text{aggregate}_t - x_t`
    (minus the pseudo-gradient; squares, roots and divisions element-wise):

    .. math::

        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) \Delta_t \\
        v_t &= \beta_2 v_{t-1} + (1 - \beta_2) \Delta_t^2 \\
        x_{t+1} &= x_t + \eta \frac{m_t}{\sqrt{v_t} + \tau}

    There is no bias correction. The state starts as Algorithm 2 has it:
    :math:`m_{-1} = 0` and :math:`v_{-1} = \tau^2` (the smallest value its
    :math:`v_{-1} \ge \tau^2` allows); ``tau`` controls the adaptivity.

    Parameters
    ----------
    eta:
        Server learning rate :math:`\eta` (> 0).
    beta_1, beta_2:
        Decay rates of the first and second moments, within [0, 1).
    tau:
        Adaptivity :math:`\tau` (> 0).

    Attributes
    ----------
    m, v:
        The first and second moments (float64 ArrayRecords), ``None`` before the first
        step.

    Examples
    --------
    >>> opt = Adam(eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3)
    >>> x = ArrayRecord({"w": np.array([0.0])})
    >>> opt.step(x, ArrayRecord({"w": np.array([1.0])}))["w"].round(4)  # 0.1 * 0.1 / (0.1 + tau)
    array([0.099])
    """

    def __init__(
        self, eta: float = 0.1, beta_1: float = 0.9, beta_2: float = 0.99, tau: float = 1e-3
    ) -> None:
        super().__init__(eta, beta_1, tau)
        self.beta_2 = _check_decay("beta_2", beta_2)

    def _second_moment(self, v: _F64, delta_sq: _F64) -> _F64:
        result: _F64 = self.beta_2 * v + (1.0 - self.beta_2) * delta_sq
        return result


@final
class Yogi(_Adaptive):
    r"""Yogi on the server (FedYogi): the second moment moves additively, by sign.

    Reddi et al., "Adaptive Federated Optimization", ICLR 2021, Algorithm 2,
    https://arxiv.org/abs/2003.00295. With :math:`\Delta_t = \text{aggregate}_t - x_t`
    (minus the pseudo-gradient; squares, roots and divisions element-wise):

    .. math::

        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) \Delta_t \\
        v_t &= v_{t-1} - (1 - \beta_2) \Delta_t^2 \operatorname{sign}(v_{t-1} - \Delta_t^2) \\
        x_{t+1} &= x_t + \eta \frac{m_t}{\sqrt{v_t} + \tau}

    Bias correction, initial state, parameters and attributes: as :class:`Adam`.

    Examples
    --------
    >>> opt = Yogi(eta=0.01)
    >>> opt.step(ArrayRecord({"w": np.zeros(1)}), ArrayRecord({"w": np.ones(1)}))["w"].shape
    (1,)
    """

    def __init__(
        self, eta: float = 0.01, beta_1: float = 0.9, beta_2: float = 0.99, tau: float = 1e-3
    ) -> None:
        super().__init__(eta, beta_1, tau)
        self.beta_2 = _check_decay("beta_2", beta_2)

    def _second_moment(self, v: _F64, delta_sq: _F64) -> _F64:
        result: _F64 = v - (1.0 - self.beta_2) * delta_sq * np.sign(v - delta_sq)
        return result


@final
class Adagrad(_Adaptive):
    r"""Adagrad on the server (FedAdagrad): the second moment sums squared updates.

    Reddi et al., "Adaptive Federated Optimization", ICLR 2021, Algorithm 2,
    https://arxiv.org/abs/2003.00295. With :math:`\Delta_t = \text{aggregate}_t - x_t`
    (minus the pseudo-gradient; squares, roots and divisions element-wise):

    .. math::

        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) \Delta_t \\
        v_t &= v_{t-1} + \Delta_t^2 \\
        x_{t+1} &= x_t + \eta \frac{m_t}{\sqrt{v_t} + \tau}

    There is no bias correction. The state starts as Algorithm 2 has it:
    :math:`m_{-1} = 0` and :math:`v_{-1} = \tau^2` (the smallest value its
    :math:`v_{-1} \ge \tau^2` allows); ``tau`` controls the adaptivity.

    Parameters
    ----------
    eta:
        Server learning rate :math:`\eta` (> 0).
    tau:
        Adaptivity :math:`\tau` (> 0).
    beta_1:
        Decay of the first moment, within [0, 1). Algorithm 2 keeps it for Adagrad
        too; the default 0 (no momentum) is the paper's analysed FedAdagrad.

    Attributes
    ----------
    m, v:
        The first and second moments (float64 ArrayRecords), ``None`` before the first
        step.

    Examples
    --------
    >>> opt = Adagrad(eta=0.1, tau=1e-3)
    >>> opt.step(ArrayRecord({"w": np.zeros(1)}), ArrayRecord({"w": np.ones(1)}))["w"].round(4)
    array([0.0999])
    """

    def __init__(self, eta: float = 0.1, tau: float = 1e-3, beta_1: float = 0.0) -> None:
        super().__init__(eta, beta_1, tau)

    def _second_moment(self, v: _F64, delta_sq: _F64) -> _F64:
        result: _F64 = v + delta_sq
        return result


# -- strategies ---------------------------------------------------------------------------
class FedAvgM(FedAvg):
    r"""FedAvg with server momentum: :class:`FedAvg` with a :class:`ServerSGD` optimizer.

    Hsu, Qi and Brown, "Measuring the Effects of Non-Identical Data Distribution for
    Federated Visual Classification", 2019, https://arxiv.org/abs/1909.06335. The update
    is :class:`ServerSGD`'s; every other parameter is :class:`FedAvg`'s.

    Parameters
    ----------
    server_learning_rate:
        The server learning rate :math:`\eta`.
    server_momentum:
        The server momentum :math:`\beta`, within [0, 1).
    nesterov:
        Use Nesterov momentum.

    Examples
    --------
    >>> strategy = FedAvgM(server_momentum=0.9, rng=np.random.default_rng(0))
    >>> strategy.optimizer
    ServerSGD(learning_rate=1.0, momentum=0.9, nesterov=False)
    """

    def __init__(
        self,
        *,
        server_learning_rate: float = 1.0,
        server_momentum: float = 0.9,
        nesterov: bool = False,
        **kwargs: Unpack[FedAvgKwargs],
    ) -> None:
        optimizer = ServerSGD(server_learning_rate, server_momentum, nesterov)
        super().__init__(optimizer=optimizer, **kwargs)


class FedAdam(FedAvg):
    """FedAdam: :class:`FedAvg` with the :class:`Adam` server optimizer.

    Reddi et al., "Adaptive Federated Optimization", ICLR 2021,
    https://arxiv.org/abs/2003.00295. The update (Algorithm 2) is :class:`Adam`'s;
    every other parameter is :class:`FedAvg`'s.

    Parameters
    ----------
    eta, beta_1, beta_2, tau:
        As in :class:`Adam`.

    Examples
    --------
    >>> strategy = FedAdam(eta=0.01, fraction_train=0.1, rng=np.random.default_rng(0))
    """

    def __init__(
        self,
        *,
        eta: float = 0.1,
        beta_1: float = 0.9,
        beta_2: float = 0.99,
        tau: float = 1e-3,
        **kwargs: Unpack[FedAvgKwargs],
    ) -> None:
        super().__init__(optimizer=Adam(eta, beta_1, beta_2, tau), **kwargs)


class FedYogi(FedAvg):
    """FedYogi: :class:`FedAvg` with the :class:`Yogi` server optimizer.

    Reddi et al., "Adaptive Federated Optimization", ICLR 2021,
    https://arxiv.org/abs/2003.00295. The update (Algorithm 2) is :class:`Yogi`'s;
    every other parameter is :class:`FedAvg`'s.

    Parameters
    ----------
    eta, beta_1, beta_2, tau:
        As in :class:`Yogi`.

    Examples
    --------
    >>> strategy = FedYogi(eta=0.01, rng=np.random.default_rng(0))
    """

    def __init__(
        self,
        *,
        eta: float = 0.01,
        beta_1: float = 0.9,
        beta_2: float = 0.99,
        tau: float = 1e-3,
        **kwargs: Unpack[FedAvgKwargs],
    ) -> None:
        super().__init__(optimizer=Yogi(eta, beta_1, beta_2, tau), **kwargs)


class FedAdagrad(FedAvg):
    """FedAdagrad: :class:`FedAvg` with the :class:`Adagrad` server optimizer.

    Reddi et al., "Adaptive Federated Optimization", ICLR 2021,
    https://arxiv.org/abs/2003.00295. The update (Algorithm 2) is :class:`Adagrad`'s;
    every other parameter is :class:`FedAvg`'s.

    Parameters
    ----------
    eta, tau, beta_1:
        As in :class:`Adagrad`.

    Examples
    --------
    >>> strategy = FedAdagrad(eta=0.1, rng=np.random.default_rng(0))
    """

    def __init__(
        self,
        *,
        eta: float = 0.1,
        tau: float = 1e-3,
        beta_1: float = 0.0,
        **kwargs: Unpack[FedAvgKwargs],
    ) -> None:
        super().__init__(optimizer=Adagrad(eta, tau, beta_1), **kwargs)
