"""Node-side FedProx helpers: the proximal term in NumPy and PyTorch, simulated stragglers."""

from __future__ import annotations

import builtins
import sys
from typing import Any

import numpy as np
import pytest
import torch

from pollinate.client.fedprox import (
    STRAGGLER_P,
    LocalWork,
    proximal_gradient,
    proximal_term,
    simulated_straggler_work,
    straggler_work,
    torch_proximal_term,
)
from pollinate.errors import ConfigError
from pollinate.records import ArrayRecord


def _pair() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    params = {"w": np.array([[1.0, 2.0], [3.0, 4.0]]), "b": np.array([0.5, -1.0])}
    global_params = {"w": np.array([[0.0, 2.0], [5.0, 1.0]]), "b": np.array([0.5, 1.0])}
    return params, global_params


# -- NumPy ------------------------------------------------------------------------------
def test_proximal_gradient_by_hand() -> None:
    params, global_params = _pair()

    grad = proximal_gradient(params, global_params, 0.5)

    # w - w_t = [[1, 0], [-2, 3]], b - b_t = [0, -2]; times mu = 0.5
    np.testing.assert_array_equal(grad["w"], [[0.5, 0.0], [-1.0, 1.5]])
    np.testing.assert_array_equal(grad["b"], [0.0, -1.0])
    assert list(grad) == ["w", "b"]


def test_proximal_term_by_hand() -> None:
    params, global_params = _pair()
    # squared distance: 1 + 0 + 4 + 9 + 0 + 4 = 18; mu/2 * 18 with mu = 0.5
    assert proximal_term(params, global_params, 0.5) == 4.5
    assert proximal_term(params, params, 3.0) == 0.0
    assert proximal_term(params, global_params, 0.0) == 0.0


def test_proximal_gradient_is_the_gradient_of_the_term() -> None:
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(3, 2))}
    global_params = {"w": rng.normal(size=(3, 2))}
    eps = 1e-6
    bumped = {"w": params["w"].copy()}
    bumped["w"][1, 0] += eps
    numeric = (
        proximal_term(bumped, global_params, 0.7) - proximal_term(params, global_params, 0.7)
    ) / eps
    analytic = proximal_gradient(params, global_params, 0.7)["w"][1, 0]
    assert numeric == pytest.approx(analytic, rel=1e-4)


def test_numpy_helpers_take_array_records_and_keep_float32() -> None:
    params = ArrayRecord({"w": np.ones(3, np.float32)})
    global_params = ArrayRecord({"w": np.zeros(3, np.float32)})
    grad = proximal_gradient(params, global_params, 0.1)
    assert grad["w"].dtype == np.float32
    np.testing.assert_allclose(grad["w"], 0.1, rtol=1e-6)


def test_numpy_helpers_never_mutate_their_inputs() -> None:
    params, global_params = _pair()
    before = (
        {k: v.copy() for k, v in params.items()},
        {k: v.copy() for k, v in global_params.items()},
    )
    proximal_gradient(params, global_params, 1.0)
    proximal_term(params, global_params, 1.0)
    for original, kept in zip((params, global_params), before, strict=True):
        for name in original:
            np.testing.assert_array_equal(original[name], kept[name])


@pytest.mark.parametrize(
    ("global_params", "match"),
    [
        ({"w": np.zeros((2, 2))}, "missing from global_params: \\['b'\\]"),
        ({"w": np.zeros((2, 2)), "b": np.zeros(2), "c": np.zeros(1)}, "only in global_params"),
        ({"w": np.zeros((2, 3)), "b": np.zeros(2)}, "shape"),
    ],
)
def test_mismatched_models_raise_config_error(
    global_params: dict[str, np.ndarray], match: str
) -> None:
    params, _ = _pair()
    with pytest.raises(ConfigError, match=match):
        proximal_gradient(params, global_params, 1.0)
    with pytest.raises(ConfigError, match=match):
        proximal_term(params, global_params, 1.0)


@pytest.mark.parametrize("mu", [-1.0, float("nan"), "0.1", True])
def test_mu_is_validated(mu: Any) -> None:
    params, global_params = _pair()
    with pytest.raises(ConfigError, match="mu"):
        proximal_gradient(params, global_params, mu)
    with pytest.raises(ConfigError, match="mu"):
        proximal_term(params, global_params, mu)


# -- PyTorch ----------------------------------------------------------------------------
def _torch_model(dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)).to(
        dtype
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("as_numpy", [True, False], ids=["numpy-global", "tensor-global"])
def test_torch_term_gradient_is_exactly_mu_times_the_distance(
    dtype: torch.dtype, as_numpy: bool
) -> None:
    # Arrange: the global model is the local one shifted by random amounts.
    model = _torch_model(dtype)
    rng = np.random.default_rng(1)
    global_tensors = {
        name: (p.detach() + torch.as_tensor(rng.normal(size=tuple(p.shape)), dtype=dtype))
        for name, p in model.named_parameters()
    }
    global_params: dict[str, Any] = (
        {name: t.numpy() for name, t in global_tensors.items()} if as_numpy else global_tensors
    )
    mu = 0.1

    # Act
    term = torch_proximal_term(model, global_params, mu)
    term.backward()

    # Assert: the gradient is mu * (w - w_t), bit for bit; the value is mu/2 * ||w - w_t||^2.
    squared = 0.0
    for name, p in model.named_parameters():
        expected = torch.tensor(mu, dtype=dtype) * (p.detach() - global_tensors[name])
        assert p.grad is not None
        assert torch.equal(p.grad, expected), name
        squared += float(torch.sum((p.detach() - global_tensors[name]).double() ** 2))
    assert term.item() == pytest.approx(mu / 2 * squared, rel=1e-5)
    assert all(not t.requires_grad for t in global_tensors.values())


def test_torch_term_adds_to_a_real_loss() -> None:
    model = _torch_model(torch.float64)
    global_params = {n: p.detach().clone() for n, p in model.named_parameters()}
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 1])

    loss = torch.nn.functional.cross_entropy(model(x), y)
    total = loss + torch_proximal_term(model, global_params, 1.0)

    # At w = w_t the term and its gradient vanish.
    assert total.item() == loss.item()
    total.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_torch_term_ignores_frozen_parameters_and_buffers() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    model[0].bias.requires_grad_(False)
    state = {k: v.detach().numpy() + 1.0 for k, v in model.state_dict().items()}
    del state["0.bias"]  # frozen: not needed

    term = torch_proximal_term(model, state, 2.0)

    # trainable: 0.weight (4), 1.weight (2), 1.bias (2); each entry about 1 away
    assert term.item() == pytest.approx(8.0, rel=1e-5)


def test_torch_term_with_missing_or_misshapen_parameters_raises_config_error() -> None:
    model = torch.nn.Linear(2, 1)
    with pytest.raises(ConfigError, match="no 'bias'"):
        torch_proximal_term(model, {"weight": np.zeros((1, 2), np.float32)}, 1.0)
    with pytest.raises(ConfigError, match="shape"):
        torch_proximal_term(
            model, {"weight": np.zeros((2, 1), np.float32), "bias": np.zeros(1)}, 1.0
        )
    with pytest.raises(ConfigError, match="mu"):
        torch_proximal_term(model, {}, -1.0)


def test_torch_term_without_torch_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_torch(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    monkeypatch.delitem(sys.modules, "torch")
    with pytest.raises(ImportError, match="pip install torch"):
        torch_proximal_term(object(), {}, 1.0)  # type: ignore[arg-type]


def test_importing_the_helpers_does_not_import_torch() -> None:
    import subprocess

    code = "import sys, pollinate.client.fedprox; print('torch' in sys.modules)"
    out = subprocess.check_output([sys.executable, "-c", code], text=True)
    assert out.strip() == "False"


# -- stragglers -------------------------------------------------------------------------
def test_a_straggler_runs_1_to_e_minus_1_epochs() -> None:
    rng = np.random.default_rng(0)
    epochs = {straggler_work(20, straggler=True, rng=rng).epochs for _ in range(2000)}
    assert epochs == set(range(1, 20))


def test_other_nodes_run_every_epoch() -> None:
    work = straggler_work(20, straggler=False, rng=np.random.default_rng(0))
    assert (work.epochs, work.asked_epochs, work.completed_fraction, work.partial) == (
        20,
        20,
        1.0,
        False,
    )


def test_with_one_epoch_asked_a_straggler_runs_it() -> None:
    work = straggler_work(1, straggler=True, rng=np.random.default_rng(0))
    assert (work.epochs, work.partial) == (1, False)


def test_completed_fraction() -> None:
    assert LocalWork(epochs=5, asked_epochs=20).completed_fraction == 0.25
    assert LocalWork(epochs=5, asked_epochs=20).partial
    with pytest.raises(ConfigError):
        LocalWork(epochs=21, asked_epochs=20)


@pytest.mark.parametrize("bad", [0, -3, 2.0, True, "5"])
def test_num_epochs_is_validated(bad: Any) -> None:
    with pytest.raises(ConfigError, match="num_epochs"):
        straggler_work(bad, straggler=True, rng=np.random.default_rng(0))


def test_simulated_stragglers_follow_the_probability_and_are_reproducible() -> None:
    config = {STRAGGLER_P: 0.5}

    def draw(node: int, server_round: int) -> LocalWork:
        return simulated_straggler_work(20, config, seed=7, node_id=node, server_round=server_round)

    works = [draw(node, r) for node in range(1, 41) for r in range(1, 26)]
    share = np.mean([w.partial for w in works])
    assert 0.44 < share < 0.56
    assert all(1 <= w.epochs <= 19 for w in works if w.partial)
    # Same (seed, node, round): same decision and epochs, whoever asks (FedAvg or FedProx).
    assert [draw(node, r) for node in range(1, 41) for r in range(1, 26)] == works
    # Another round or seed: other draws.
    assert [draw(1, r) for r in range(1, 26)] != [draw(1, r) for r in range(2, 27)]


@pytest.mark.parametrize(("probability", "expected"), [(0.0, False), (1.0, True)])
def test_straggler_probability_bounds(probability: float, expected: bool) -> None:
    works = [
        simulated_straggler_work(10, {STRAGGLER_P: probability}, seed=0, node_id=n, server_round=3)
        for n in range(1, 30)
    ]
    assert {w.partial for w in works} == {expected}


def test_no_straggler_key_means_never_a_straggler() -> None:
    work = simulated_straggler_work(10, {"partition-id": 3}, seed=0, node_id=4, server_round=1)
    assert work == LocalWork(epochs=10, asked_epochs=10)


@pytest.mark.parametrize("bad", [1.5, -0.1, "0.5", True])
def test_straggler_probability_is_validated(bad: Any) -> None:
    with pytest.raises(ConfigError, match=STRAGGLER_P):
        simulated_straggler_work(10, {STRAGGLER_P: bad}, seed=0, node_id=1, server_round=1)


def test_seed_node_and_round_are_validated() -> None:
    with pytest.raises(ConfigError, match="server_round"):
        simulated_straggler_work(10, {}, seed=0, node_id=1, server_round=-1)
