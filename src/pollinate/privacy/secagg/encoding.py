"""From a node's arrays to the integer vector SecAgg+ sums, and from the sum back.

A node flattens its arrays (in order) into one float vector, clips each entry to
``[-clipping_range, clipping_range]`` and quantizes it (:mod:`.quantize`). For a
weighted mean (FedAvg), it first scales the clipped update by
``r = min(weight / max_weight, 1)`` and appends ``r`` itself, quantized on ``[0, 1]``:
the server then gets ``sum(r_i * x_i)`` and ``sum(r_i)`` and divides (the encoding of
Flower's ``SecAggPlusWorkflow``). Integer sums travel without any per-node
information; the structure (names, dtypes, shapes) is the same for every node.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from pollinate.errors import AggregationError
from pollinate.privacy.secagg.messages import SecAggParams, Structure
from pollinate.privacy.secagg.quantize import dequantize_sum, quantize
from pollinate.records import ArrayRecord
from pollinate.strategy.aggregate import cast_like

__all__ = ["DecodedSum", "decode_sum", "encode_update", "structure_of"]


def structure_of(arrays: ArrayRecord) -> Structure:
    """(name, dtype name, shape) of each array, in order."""
    return [(name, array.dtype.name, tuple(array.shape)) for name, array in arrays.items()]


def encode_update(
    arrays: ArrayRecord,
    params: SecAggParams,
    *,
    weight: float | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[NDArray[np.uint64], Structure]:
    """The quantized vector of ``arrays`` (scaled by the weight when ``params.weighted``).

    Examples
    --------
    >>> import os
    >>> params = SecAggParams(session=os.urandom(16), threshold=2, clipping_range=1.0,
    ...     quantization_range=5, modulus_bits=32, max_weight=10.0, weighted=True,
    ...     arrays_key="arrays", metrics_key="metrics", weight_key="num-examples")
    >>> vector, structure = encode_update(ArrayRecord({"w": np.array([1.0, -1.0])}),
    ...                                   params, weight=5)
    >>> vector.tolist(), structure
    ([3, 1, 2], [('w', 'float64', (2,))])
    """
    c = float(params.clipping_range)
    levels = params.quantization_range
    if arrays:
        flat = np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays.values()])
    else:
        flat = np.zeros(0, np.float64)
    np.clip(flat, -c, c, out=flat)
    parts = []
    if params.weighted:
        if weight is None or not np.isfinite(weight) or weight < 0:
            raise AggregationError(
                f"a weighted SecAgg+ update needs a finite weight >= 0, got {weight!r}"
            )
        ratio = min(float(weight) / params.max_weight, 1.0)
        flat *= ratio
        parts.append(quantize(flat, low=-c, high=c, levels=levels, rng=rng))
        parts.append(quantize(np.array([ratio]), low=0.0, high=1.0, levels=levels, rng=rng))
    else:
        parts.append(quantize(flat, low=-c, high=c, levels=levels, rng=rng))
    return np.concatenate(parts), structure_of(arrays)


@dataclass(frozen=True)
class DecodedSum:
    """The float sum of the survivors' (weighted) updates.

    Attributes
    ----------
    arrays:
        ``sum(r_i * x_i)`` (weighted) or ``sum(x_i)``, float64, in the update's
        structure.
    weight:
        Weighted: ``max_weight * sum(r_i)``, the total weight (the survivors' example
        count when no weight exceeded ``max_weight``). Unweighted: the survivor count.
    count:
        How many inputs the sum holds.
    structure:
        The nodes' (name, dtype, shape) of each array.
    """

    arrays: ArrayRecord
    weight: float
    count: int
    structure: Structure = field(default_factory=list)

    def in_dtypes(self, arrays: ArrayRecord) -> ArrayRecord:
        """``arrays`` (float64, e.g. the sum or the mean) cast back to the nodes' dtypes
        (integers rounded, bools thresholded)."""
        dtypes = {name: np.dtype(dtype) for name, dtype, _ in self.structure}
        return ArrayRecord({name: cast_like(a, dtypes[name]) for name, a in arrays.items()})

    def mean(self, params: SecAggParams) -> ArrayRecord:
        """The weighted (or plain) mean of the updates, float64."""
        divisor = self.weight / params.max_weight if params.weighted else float(self.count)
        if divisor <= 0:
            raise AggregationError(
                "the securely aggregated weight is 0: every surviving node reported weight 0"
            )
        return ArrayRecord({name: a / divisor for name, a in self.arrays.items()})


def decode_sum(
    total: NDArray[np.uint64], structure: Structure, count: int, params: SecAggParams
) -> DecodedSum:
    """Dequantize the unmasked integer sum of ``count`` inputs into float arrays."""
    c = float(params.clipping_range)
    levels = params.quantization_range
    size = total.size - int(params.weighted)
    values = dequantize_sum(total[:size], count=count, low=-c, high=c, levels=levels)
    arrays = ArrayRecord()
    offset = 0
    for name, _, shape in structure:
        length = int(np.prod(shape, dtype=np.int64))
        arrays[name] = values[offset : offset + length].reshape(shape)
        offset += length
    if params.weighted:
        ratio = dequantize_sum(total[size:], count=count, low=0.0, high=1.0, levels=levels)
        weight = max(float(ratio[0]), 0.0) * params.max_weight
    else:
        weight = float(count)
    return DecodedSum(arrays, weight, count, list(structure))
