"""SCAFFOLD: control variates that correct the nodes' drift on heterogeneous data."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from pollinate.errors import AggregationError, ConfigError
from pollinate.records import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict, keys
from pollinate.strategy.aggregate import WeightedMeanAccumulator, cast_like, describe_structure
from pollinate.strategy.fedavg import FedAvg
from pollinate.strategy.fedopt import ServerSGD

if TYPE_CHECKING:
    from typing import Unpack  # Python 3.11; annotations only, never evaluated

    from pollinate.server.grid import Grid
    from pollinate.strategy.fedavg import FedAvgKwargs

__all__ = ["Scaffold"]


class Scaffold(FedAvg):
    r"""SCAFFOLD: stochastic controlled averaging, with server and node control variates.

    Karimireddy, Kale, Mohri, Reddi, Stich and Suresh, "SCAFFOLD: Stochastic Controlled
    Averaging for Federated Learning", ICML 2020, https://arxiv.org/abs/1910.06378
    (Algorithm 1, option II).

    The server keeps a control variate :math:`c` shaped like the model (zeros at first)
    and sends it with every train instruction as the ArrayRecord ``control``. Node
    :math:`i` keeps its own :math:`c_i` (in ``Context.state``; see
    :mod:`pollinate.client.algorithms`), takes :math:`K` steps
    :math:`y_i \leftarrow y_i - \eta_l (g_i(y_i) - c_i + c)` from :math:`y_i = x`, sets
    :math:`c_i^+ = c_i - c + (x - y_i)/(K \eta_l)` and replies with :math:`y_i` (the
    ``arrays``) and :math:`\Delta c_i = c_i^+ - c_i` (the ArrayRecord
    ``control-delta``). Over the :math:`|S|` good replies of :math:`N` nodes:

    .. math::

        x \leftarrow x + \eta_g \frac{1}{|S|} \sum_{i \in S} (y_i - x), \qquad
        c \leftarrow c + \frac{|S|}{N} \frac{1}{|S|} \sum_{i \in S} \Delta c_i

    As in the paper, the means are unweighted (every node counts once, whatever its
    number of examples; reply metrics are averaged the same way). The model step is
    :class:`~pollinate.strategy.fedopt.ServerSGD` with ``learning_rate =``
    :math:`\eta_g`, and both sums stream (O(model) memory). :math:`c` stays on the
    instance across :meth:`start` calls; set ``control = None`` to begin afresh.

    Parameters
    ----------
    global_learning_rate:
        The server step size :math:`\eta_g` (> 0).
    num_nodes:
        :math:`N`, the number of nodes whose :math:`c_i` make up :math:`c`; by default
        the number of nodes connected when each round's train instructions are made.
    **kwargs:
        :class:`FedAvg`'s parameters (no ``optimizer``).

    Attributes
    ----------
    control:
        The server control variate :math:`c` (the model's names, dtypes and shapes),
        ``None`` until the first round.

    Examples
    --------
    >>> strategy = Scaffold(global_learning_rate=1.0, rng=np.random.default_rng(0))
    >>> strategy.control is None
    True
    """

    def __init__(
        self,
        *,
        global_learning_rate: float = 1.0,
        num_nodes: int | None = None,
        **kwargs: Unpack[FedAvgKwargs],
    ) -> None:
        if num_nodes is not None and (
            isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 1
        ):
            raise ConfigError(f"num_nodes must be an int >= 1 or None, got {num_nodes!r}")
        # ServerSGD validates the learning rate and names it in its error.
        try:
            optimizer = ServerSGD(learning_rate=global_learning_rate)
        except ConfigError:
            raise ConfigError(
                f"global_learning_rate must be a finite number > 0, got {global_learning_rate!r}"
            ) from None
        super().__init__(optimizer=optimizer, **kwargs)
        self.global_learning_rate = float(global_learning_rate)
        self.num_nodes = num_nodes
        self.control: ArrayRecord | None = None
        #: :math:`N` of the round being aggregated.
        self.round_num_nodes = 0
        self._control_deltas = WeightedMeanAccumulator()

    def __repr__(self) -> str:
        return (
            f"Scaffold(global_learning_rate={self.global_learning_rate}, "
            f"num_nodes={self.num_nodes}, fraction_train={self.fraction_train})"
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """FedAvg's train instructions, each with the server control variate ``control``."""
        if self.control is None:
            self.control = ArrayRecord({k: np.zeros_like(a) for k, a in arrays.items()})
        elif _shapes(self.control) != _shapes(arrays):
            raise ConfigError(
                f"the model {describe_structure(arrays.structure())} does not match the "
                f"server control variate {describe_structure(self.control.structure())}; "
                "set control = None to start SCAFFOLD afresh with another model"
            )
        self.round_num_nodes = self.num_nodes if self.num_nodes is not None else len(grid.nodes())
        return super().configure_train(server_round, arrays, config, grid)

    def instruction_content(
        self, message_type: str, server_round: int, arrays: ArrayRecord, config: ConfigRecord
    ) -> RecordDict:
        """FedAvg's content, plus the server control variate ``control`` for training."""
        content = super().instruction_content(message_type, server_round, arrays, config)
        if message_type == keys.TRAIN and self.control is not None:
            content[keys.CONTROL] = self.control
        return content

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Step the model with ``global_learning_rate`` and ``c`` by the mean control delta."""
        self._control_deltas = WeightedMeanAccumulator()
        arrays, metrics = super().aggregate_train(server_round, replies)
        control = self.control
        if arrays is None or control is None or not self._control_deltas.count:
            return arrays, metrics
        count = self._control_deltas.count
        mean_delta = self._control_deltas.result()
        scale = count / max(self.round_num_nodes, count)
        self.control = ArrayRecord(
            {
                k: cast_like(np.add(c, scale * mean_delta[k], dtype=np.float64), c.dtype)
                for k, c in control.items()
            }
        )
        return arrays, metrics

    def update_from_reply(
        self, server_round: int, reply: Message, source: str
    ) -> tuple[ArrayRecord, float, MetricRecord] | None:
        """The node's model with weight 1; its ``control-delta`` is folded into the mean."""
        update = super().update_from_reply(server_round, reply, source)
        if update is None:
            return None
        arrays, _, metrics = update
        control = self.control
        if control is None:
            raise AggregationError(
                f"{source}: SCAFFOLD aggregates against the control variate sent with "
                "configure_train, but no train instructions were configured"
            )
        try:
            delta = reply.content.get_kind(keys.CONTROL_DELTA, ArrayRecord)
        except ConfigError as exc:
            raise AggregationError(f"{source}: {exc}; a SCAFFOLD node returns c_i+ - c_i") from None
        if _shapes(delta) != _shapes(control):
            raise AggregationError(
                f"{source} has a {keys.CONTROL_DELTA!r} of "
                f"{describe_structure(delta.structure())}, but the control variate is "
                f"{describe_structure(control.structure())}; a SCAFFOLD node returns "
                "c_i+ - c_i for every array of the model"
            )
        self._control_deltas.add(delta, 1.0, source=source)
        return arrays, 1.0, metrics


def _shapes(record: ArrayRecord) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes, not dtypes: a node may send its control delta in float64."""
    return [(name, array.shape) for name, array in record.items()]
