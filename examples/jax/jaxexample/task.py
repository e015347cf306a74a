"""The quickstart's one-hidden-layer MLP in JAX: a pytree of parameters, optax SGD."""

from __future__ import annotations

from functools import lru_cache, partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pollinate.data import DirichletPartitioner, FederatedDataset, load_sklearn

NUM_FEATURES = 64  # 8x8 digit images
NUM_CLASSES = 10

#: The model: a pytree (here a dict) of arrays. The adapter names its leaves "b1", "w1"...
Params = dict[str, jax.Array]


@lru_cache(maxsize=4)
def load_data(num_partitions: int, alpha: float, seed: int) -> FederatedDataset:
    """Digits, split into a held-out test set and label-skewed partitions (cached)."""
    return load_sklearn(
        "digits",
        num_partitions=num_partitions,
        partitioner=DirichletPartitioner(alpha=alpha, min_partition_size=10),
        seed=seed,
    )


def init_model(hidden_units: int, seed: int) -> Params:
    """He-initialized weights, zero biases (the quickstart's initialisation)."""
    # Drawn with NumPy: eager jax.random would compile its kernels on first use, and
    # nodes call this for a template on every message.
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((NUM_FEATURES, hidden_units)) * np.sqrt(2 / NUM_FEATURES)
    w2 = rng.standard_normal((hidden_units, NUM_CLASSES)) * np.sqrt(2 / hidden_units)
    return {
        "w1": jnp.asarray(w1, jnp.float32),
        "b1": jnp.zeros(hidden_units, jnp.float32),
        "w2": jnp.asarray(w2, jnp.float32),
        "b2": jnp.zeros(NUM_CLASSES, jnp.float32),
    }


def _logits(params: Params, x: jax.Array) -> jax.Array:
    hidden = jax.nn.relu(x @ params["w1"] + params["b1"])
    return hidden @ params["w2"] + params["b2"]


def _loss(params: Params, x: jax.Array, y: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean cross-entropy over the real (``mask`` = 1) rows of a padded batch."""
    losses = optax.softmax_cross_entropy_with_integer_labels(_logits(params, x), y)
    return jnp.sum(losses * mask) / jnp.maximum(jnp.sum(mask), 1.0)


@partial(jax.jit, static_argnames="optimizer")
def _step(
    params: Params,
    opt_state: optax.OptState,
    x: jax.Array,
    y: jax.Array,
    mask: jax.Array,
    optimizer: optax.GradientTransformation,
) -> tuple[Params, optax.OptState, jax.Array]:
    loss, grads = jax.value_and_grad(_loss)(params, x, y, mask)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


@lru_cache(maxsize=8)
def _sgd(lr: float) -> optax.GradientTransformation:
    # One optimizer object per learning rate, so the jitted step compiles once for it.
    return optax.sgd(lr)


def train(
    params: Params,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    rng: np.random.Generator,
) -> tuple[Params, float]:
    """Mini-batch SGD on cross-entropy; returns new parameters and the mean training loss.

    Every batch is padded to ``batch_size`` rows (the padding masked out of the loss), so
    the jitted step compiles once, whatever the size of each node's data.
    """
    optimizer = _sgd(lr)
    opt_state = optimizer.init(params)
    losses = []
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch_size):
            batch = order[start : start + batch_size]
            padded = np.zeros(batch_size, np.int64)
            padded[: len(batch)] = batch
            mask = (np.arange(batch_size) < len(batch)).astype(np.float32)
            params, opt_state, loss = _step(
                params, opt_state, x[padded], y[padded], mask, optimizer
            )
            losses.append(float(loss))
    return params, float(np.mean(losses)) if losses else 0.0


_EVAL_CHUNK = 128  # rows per jitted evaluation call (padded), so it compiles once


@jax.jit
def _eval_chunk(
    params: Params, x: jax.Array, y: jax.Array, mask: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Summed cross-entropy and number of correct predictions over the real rows."""
    logits = _logits(params, x)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    correct = (logits.argmax(axis=1) == y).astype(jnp.float32)
    return jnp.sum(losses * mask), jnp.sum(correct * mask)


def evaluate(params: Params, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Cross-entropy loss and accuracy."""
    total_loss, total_correct = 0.0, 0.0
    for start in range(0, len(x), _EVAL_CHUNK):
        rows = np.arange(start, min(start + _EVAL_CHUNK, len(x)))
        padded = np.zeros(_EVAL_CHUNK, np.int64)
        padded[: len(rows)] = rows
        mask = (np.arange(_EVAL_CHUNK) < len(rows)).astype(np.float32)
        loss, correct = _eval_chunk(params, x[padded], y[padded], mask)
        total_loss += float(loss)
        total_correct += float(correct)
    count = max(len(x), 1)
    return total_loss / count, total_correct / count
