"""Node-side helpers: SCAFFOLD's correction and control update, c_i in Context.state."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from pollinate.client.algorithms import (
    CONTROL_STATE_KEY,
    load_control,
    scaffold_correction,
    scaffold_update_control,
    store_control,
)
from pollinate.errors import ConfigError
from pollinate.records import ArrayRecord, ConfigRecord, Context


def _context() -> Context:
    return Context(run_id=1, node_id=3)


def test_load_control_starts_at_zeros_like_the_model() -> None:
    like = {"w": np.ones((2, 2), np.float32), "b": np.ones(3)}
    control = load_control(_context(), like=like)
    assert list(control) == ["w", "b"]
    assert control["w"].dtype == np.float32 and not control["w"].any()
    assert control["b"].shape == (3,) and not control["b"].any()


def test_store_then_load_round_trips_a_copy() -> None:
    context = _context()
    control = {"w": np.array([1.0, 2.0])}
    store_control(context, control)
    control["w"][0] = 99.0  # a later in-place change is not stored

    loaded = load_control(context, like={"w": np.zeros(2)})

    assert isinstance(context.state[CONTROL_STATE_KEY], ArrayRecord)
    np.testing.assert_array_equal(loaded["w"], [1.0, 2.0])
    loaded["w"][1] = -1.0  # nor does changing what was loaded change the state
    np.testing.assert_array_equal(load_control(context, like={"w": np.zeros(2)})["w"], [1.0, 2.0])


def test_a_stored_control_for_another_model_is_a_config_error() -> None:
    context = _context()
    store_control(context, {"w": np.zeros(2)})
    with pytest.raises(ConfigError, match="stored control variate"):
        load_control(context, like={"w": np.zeros(3)})
    context.state[CONTROL_STATE_KEY] = ConfigRecord({"x": 1})
    with pytest.raises(ConfigError, match="ConfigRecord"):
        load_control(context, like={"w": np.zeros(2)})


def test_scaffold_correction_hand_computed() -> None:
    # c - c_i = [1, 2] - [0.5, -1] = [0.5, 3], in c's dtype.
    c = {"w": np.array([1.0, 2.0], np.float32)}
    c_i = {"w": np.array([0.5, -1.0], np.float32)}
    correction = scaffold_correction(c, c_i)
    np.testing.assert_array_equal(correction["w"], [0.5, 3.0])
    assert correction["w"].dtype == np.float32
    with pytest.raises(ConfigError, match="node control variate"):
        scaffold_correction(c, {"v": np.zeros(2)})


def test_scaffold_update_control_option_two_hand_computed() -> None:
    # K = 4 steps of lr 0.25, so 1 / (K lr) = 1.
    # c_i = [1, 0], c = [0.5, 0.5], x = [2, 2], y = [1, 3]
    # c_i+ = c_i - c + (x - y) = [1 - 0.5 + 1, 0 - 0.5 - 1] = [1.5, -1.5]
    # delta = c_i+ - c_i = [0.5, -1.5]
    c_i = {"w": np.array([1.0, 0.0])}
    c = {"w": np.array([0.5, 0.5])}
    x = {"w": np.array([2.0, 2.0])}
    y = {"w": np.array([1.0, 3.0])}
    before = [a["w"].copy() for a in (c_i, c, x, y)]

    update = scaffold_update_control(c_i, c, x, y, num_steps=4, learning_rate=0.25)

    np.testing.assert_allclose(update.control["w"], [1.5, -1.5])
    np.testing.assert_allclose(update.delta["w"], [0.5, -1.5])
    for array, copy in zip((c_i, c, x, y), before, strict=True):
        np.testing.assert_array_equal(array["w"], copy)


def test_with_exact_gradients_option_two_recovers_the_local_gradient_mean() -> None:
    # On f(y) = 1/2 h (y - a)^2 with corrected steps, c_i+ is the average corrected
    # gradient minus the correction: (x - y) / (K lr) - (c - c_i) = mean_k g(y_k).
    h, a, lr, steps = 2.0, 3.0, 0.1, 5
    x = np.array([0.0])
    c, c_i = np.array([0.4]), np.array([0.1])
    y, gradients = x.copy(), []
    for _ in range(steps):
        gradients.append(h * (y - a))
        y = y - lr * (gradients[-1] + (c - c_i))
    update = scaffold_update_control(
        {"w": c_i}, {"w": c}, {"w": x}, {"w": y}, num_steps=steps, learning_rate=lr
    )
    np.testing.assert_allclose(update.control["w"], np.mean(gradients, axis=0), rtol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"num_steps": 0, "learning_rate": 0.1}, "num_steps"),
        ({"num_steps": 1.5, "learning_rate": 0.1}, "num_steps"),
        ({"num_steps": 2, "learning_rate": 0.0}, "learning_rate"),
    ],
)
def test_bad_step_settings_are_config_errors(kwargs: dict[str, float], name: str) -> None:
    arrays = {"w": np.zeros(1)}
    with pytest.raises(ConfigError, match=name):
        scaffold_update_control(arrays, arrays, arrays, arrays, **kwargs)  # type: ignore[arg-type]


def test_the_helpers_import_no_ml_framework() -> None:
    code = (
        "import sys, pollinate.client.algorithms; "
        "print(sorted(m for m in ('torch', 'jax', 'tensorflow') if m in sys.modules))"
    )
    out = subprocess.check_output([sys.executable, "-c", code], text=True)
    assert out.strip() == "[]"
