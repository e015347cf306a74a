"""PyTorch models: a ``torch.nn.Module``'s ``state_dict`` <-> ArrayRecord.

Design note. The record holds the whole ``state_dict``: parameters *and* buffers
(batch-norm ``running_mean``/``running_var``/``num_batches_tracked``...), each in its
own dtype, under the ``state_dict`` names. Federated averaging then averages the
running statistics too (rounding integer counters back to int64), which is what
FedAvg with batch norm does in practice; a strategy that wants to skip them can
filter names.

- **No copy where memory allows.** For tensors on the CPU, ``to_arrays`` returns
  NumPy views of the model's own memory (``tensor.detach().cpu().numpy()`` shares
  it). The record is therefore *live*: training the model afterwards changes it.
  Build the record after training (the usual place: the reply of a train handler),
  or ``record.copy()`` for a snapshot. Tensors on other devices are copied to the CPU.
  ``load_arrays`` wraps the record's arrays as tensors without copying and lets
  ``load_state_dict`` copy them once into the model's tensors (on their device).
- **Strict.** Loading checks every key, shape and dtype first and reports all
  mismatches in one :class:`~pollinate.errors.ConfigError` (missing keys, unexpected
  keys, shapes, dtypes); nothing is loaded unless everything matches.
- **bfloat16** cannot travel in an ArrayRecord (NumPy has no such dtype). By default
  a bfloat16 tensor is an error that names it; ``TorchAdapter(upcast_bfloat16=True)``
  sends it as float32 (exact) and rounds back to bfloat16 on load. Register such an
  adapter with :func:`pollinate.adapters.register_adapter` to make it the default.

PyTorch is imported only when a module is converted; Pollinate has no extra for it,
install it yourself (https://pytorch.org/get-started/locally/).
"""

from __future__ import annotations

import sys
import warnings
from typing import TYPE_CHECKING, Any, TypeVar, final

from pollinate.adapters._base import ArraySpec, check_arrays_match, import_framework
from pollinate.errors import ConfigError
from pollinate.records import SUPPORTED_DTYPES, ArrayRecord

if TYPE_CHECKING:
    import torch  # type: ignore[import-not-found, unused-ignore]

__all__ = ["TorchAdapter"]

_M = TypeVar("_M")

_INSTALL_HINT = "install PyTorch yourself (pip install torch; see https://pytorch.org)"


def _torch() -> Any:
    return import_framework("torch", install_hint=_INSTALL_HINT)


@final
class TorchAdapter:
    """The adapter for ``torch.nn.Module``: its ``state_dict`` as an ArrayRecord.

    Parameters
    ----------
    upcast_bfloat16:
        Send bfloat16 tensors as float32 (exact) and round them back on load, instead
        of raising a ConfigError that names them.

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    >>> record = TorchAdapter().to_arrays(model)
    >>> [(name, str(a.dtype)) for name, a in record.items()][-1]
    ('1.num_batches_tracked', 'int64')
    >>> record["0.weight"].shape
    (2, 3)
    """

    def __init__(self, *, upcast_bfloat16: bool = False) -> None:
        if not isinstance(upcast_bfloat16, bool):
            raise ConfigError(f"upcast_bfloat16 must be True or False, got {upcast_bfloat16!r}")
        self.upcast_bfloat16 = upcast_bfloat16

    def __repr__(self) -> str:
        return f"TorchAdapter(upcast_bfloat16={self.upcast_bfloat16})"

    @property
    def name(self) -> str:
        """What this adapter handles."""
        return "torch.nn.Module"

    def supports(self, model: object) -> bool:
        """Whether ``model`` is a ``torch.nn.Module`` (never imports torch itself)."""
        torch = sys.modules.get("torch")
        return torch is not None and isinstance(model, torch.nn.Module)

    def _check_module(self, model: object) -> Any:
        torch = _torch()
        if not isinstance(model, torch.nn.Module):
            raise ConfigError(f"TorchAdapter handles torch.nn.Module, got {type(model).__name__}")
        return torch

    def _wire_dtype(self, name: str, tensor: torch.Tensor) -> str:
        """The NumPy dtype name ``tensor`` travels as; raise for the ones that cannot."""
        torch = sys.modules["torch"]
        if tensor.dtype == torch.bfloat16:
            if self.upcast_bfloat16:
                return "float32"
            raise ConfigError(
                f"state_dict entry {name!r} is bfloat16, which an ArrayRecord cannot hold; "
                "convert the model (model.float()) or use TorchAdapter(upcast_bfloat16=True), "
                "which sends it as float32 and rounds back on load"
            )
        dtype_name: str = str(tensor.dtype).removeprefix("torch.")
        if (
            tensor.layout != torch.strided
            or tensor.is_quantized
            or dtype_name not in SUPPORTED_DTYPES
        ):
            raise ConfigError(
                f"state_dict entry {name!r} is a {dtype_name} tensor with layout "
                f"{tensor.layout}, which cannot travel; only dense (strided) tensors of "
                f"{', '.join(SUPPORTED_DTYPES)} (and bfloat16, see above) can"
            )
        return dtype_name

    def to_arrays(self, model: Any) -> ArrayRecord:
        """The module's ``state_dict`` (parameters and buffers), as views where possible."""
        torch = self._check_module(model)
        arrays = {}
        for name, tensor in model.state_dict().items():
            self._wire_dtype(name, tensor)  # raises for dtypes that cannot travel
            value = tensor.detach()
            if value.dtype == torch.bfloat16:
                value = value.float()
            arrays[name] = value.cpu().numpy()
        return ArrayRecord(arrays)

    def load_arrays(self, model: _M, arrays: ArrayRecord) -> _M:
        """Load ``arrays`` into the module in place (strict keys, shapes, dtypes); return it."""
        torch = self._check_module(model)
        state = model.state_dict()  # type: ignore[attr-defined]
        expected: dict[str, ArraySpec] = {
            name: (self._wire_dtype(name, tensor), tuple(tensor.shape))
            for name, tensor in state.items()
        }
        check_arrays_match(f"{type(model).__name__} (torch.nn.Module)", expected, arrays)
        tensors = {}
        with warnings.catch_warnings():
            # Received arrays are read-only views; load_state_dict only reads them.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            for name, target in state.items():
                tensor = torch.from_numpy(arrays[name])
                if target.dtype == torch.bfloat16:
                    tensor = tensor.to(torch.bfloat16)
                tensors[name] = tensor
        model.load_state_dict(tensors, strict=True)  # type: ignore[attr-defined]
        return model
