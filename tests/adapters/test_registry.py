"""The adapter registry: lookup by the model's type, user adapters, lazy framework imports."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from pollinate.adapters import (
    Adapter,
    JaxAdapter,
    NumpyAdapter,
    SklearnAdapter,
    TorchAdapter,
    adapter_for,
    load_arrays,
    register_adapter,
    to_arrays,
    unregister_adapter,
)
from pollinate.adapters._base import import_framework
from pollinate.errors import ConfigError
from pollinate.records import ArrayRecord

pytestmark = pytest.mark.imports_jax  # see tests/conftest.py


class Celsius:
    """A toy model kind no built-in adapter knows."""

    def __init__(self, degrees: float) -> None:
        self.degrees = degrees


class CelsiusAdapter:
    name = "Celsius"

    def supports(self, model: object) -> bool:
        return isinstance(model, Celsius)

    def to_arrays(self, model: Any) -> ArrayRecord:
        return ArrayRecord({"degrees": np.float64(model.degrees)})

    def load_arrays(self, model: Any, arrays: ArrayRecord) -> Any:
        return Celsius(float(arrays["degrees"]))


def test_importing_adapters_imports_no_framework() -> None:
    code = "import sys, json, pollinate.adapters; print(json.dumps(sorted(sys.modules)))"
    loaded = json.loads(subprocess.check_output([sys.executable, "-c", code], text=True))
    leaks = [m for m in loaded if m.split(".")[0] in {"torch", "jax", "jaxlib", "sklearn"}]
    assert leaks == []


def test_numpy_models_do_not_import_any_framework() -> None:
    code = (
        "import sys, json, numpy as np\n"
        "from pollinate.adapters import load_arrays, to_arrays\n"
        "record = to_arrays({'w': np.zeros(3)})\n"
        "load_arrays([np.ones(2)], to_arrays([np.zeros(2)]))\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    loaded = json.loads(subprocess.check_output([sys.executable, "-c", code], text=True))
    assert [m for m in loaded if m.split(".")[0] in {"torch", "jax", "sklearn"}] == []


def test_each_builtin_kind_finds_its_adapter() -> None:
    import jax.numpy as jnp
    import torch
    from sklearn.linear_model import LogisticRegression

    assert isinstance(adapter_for(ArrayRecord()), NumpyAdapter)
    assert isinstance(adapter_for({"w": np.zeros(1)}), NumpyAdapter)
    assert isinstance(adapter_for(torch.nn.Linear(2, 1)), TorchAdapter)
    assert isinstance(adapter_for({"w": jnp.zeros(1)}), JaxAdapter)
    assert isinstance(adapter_for(LogisticRegression()), SklearnAdapter)


def test_unknown_type_error_names_the_type_and_the_supported_kinds() -> None:
    with pytest.raises(ConfigError) as info:
        to_arrays(Celsius(1.0))
    message = str(info.value)
    assert "test_registry.Celsius" in message
    for kind in ("numpy arrays", "torch.nn.Module", "JAX pytree", "LogisticRegression"):
        assert kind in message
    assert "register_adapter" in message


def test_unsupported_sklearn_estimator_is_an_unknown_type() -> None:
    from sklearn.tree import DecisionTreeClassifier

    with pytest.raises(ConfigError, match="DecisionTreeClassifier"):
        to_arrays(DecisionTreeClassifier())


def test_registered_adapter_is_used_and_can_be_removed() -> None:
    adapter = CelsiusAdapter()
    assert isinstance(adapter, Adapter)
    register_adapter(adapter)
    try:
        record = to_arrays(Celsius(21.5))
        assert float(record["degrees"]) == 21.5
        loaded = load_arrays(Celsius(0.0), ArrayRecord({"degrees": np.float64(3.0)}))
        assert loaded.degrees == 3.0
        with pytest.raises(ConfigError, match="already registered"):
            register_adapter(adapter)
    finally:
        unregister_adapter(adapter)
    with pytest.raises(ConfigError, match="no adapter"):
        to_arrays(Celsius(1.0))
    with pytest.raises(ConfigError, match="not registered"):
        unregister_adapter(adapter)


def test_registered_adapter_takes_precedence_over_builtins() -> None:
    class FirstArrayOnly:
        name = "first array only"

        def supports(self, model: object) -> bool:
            return isinstance(model, list)

        def to_arrays(self, model: Any) -> ArrayRecord:
            return ArrayRecord({"first": model[0]})

        def load_arrays(self, model: Any, arrays: ArrayRecord) -> Any:
            return [arrays["first"]]

    adapter = FirstArrayOnly()
    register_adapter(adapter)
    try:
        assert list(to_arrays([np.zeros(1), np.ones(1)])) == ["first"]
    finally:
        unregister_adapter(adapter)
    assert list(to_arrays([np.zeros(1), np.ones(1)])) == ["0", "1"]


def test_registering_something_that_is_not_an_adapter_is_refused() -> None:
    class NoLoad:
        name = "no load"

        def supports(self, model: object) -> bool:
            return True

        def to_arrays(self, model: Any) -> ArrayRecord:
            return ArrayRecord()

    with pytest.raises(ConfigError, match=r"missing: \['load_arrays'\]"):
        register_adapter(NoLoad())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("module", "hint"),
    [("torch", "pip install torch"), ("jax", "pollinate[jax]")],
)
def test_a_missing_framework_says_what_to_install(
    module: str, hint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(ImportError, match=hint.replace("[", r"\[").replace("]", r"\]")):
        import_framework(module, install_hint=hint)
    adapter: Any = TorchAdapter() if module == "torch" else JaxAdapter()
    with pytest.raises(ImportError, match="not installed"):
        adapter.to_arrays(object())
