"""The model, its training with the FedProx proximal term, and the data, in PyTorch."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import nn

from pollinate.client.fedprox import torch_proximal_term
from pollinate.data import DirichletPartitioner, FederatedDataset, load_sklearn

NUM_CLASSES = 10
IMAGE_SIDE = 8  # digits are 8x8 grey-level images

# Two cores are shared by every virtual node of a simulation: one thread each is fastest.
torch.set_num_threads(1)


class Net(nn.Module):
    """Two 3x3 convolutions with max-pooling, then a linear classifier (about 6k weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 4x4 -> 2x2
        )
        self.classifier = nn.Linear(32 * 2 * 2, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def new_model(seed: int) -> Net:
    """A freshly initialised Net, the same for the same seed (global RNG left untouched)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return Net()


@lru_cache(maxsize=4)
def load_data(num_partitions: int, alpha: float, seed: int) -> FederatedDataset:
    """Digits, split into a held-out test set and label-skewed partitions (cached)."""
    return load_sklearn(
        "digits",
        num_partitions=num_partitions,
        partitioner=DirichletPartitioner(alpha=alpha, min_partition_size=10),
        seed=seed,
    )


def as_images(x: np.ndarray) -> torch.Tensor:
    """Rows of 64 standardized pixels -> a (N, 1, 8, 8) float32 tensor."""
    # A copy: the partitions are read-only (torch warns on those) and tiny.
    return torch.tensor(np.asarray(x, np.float32)).reshape(-1, 1, IMAGE_SIDE, IMAGE_SIDE)


def train(
    model: Net,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    proximal_mu: float,
    rng: np.random.Generator,
) -> float:
    """Local SGD on cross-entropy + the FedProx proximal term; returns the mean loss.

    The proximal term ``mu/2 * ||w - w_t||^2`` (Li et al., MLSys 2020) keeps the local
    model near ``w_t``, the global model the node received: it is what makes FedProx
    robust to the label skew of the partitions.
    """
    global_params = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    criterion = nn.CrossEntropyLoss()
    images, labels = as_images(x), torch.tensor(np.asarray(y, np.int64))
    model.train()
    losses = []
    for _ in range(epochs):
        order = torch.from_numpy(rng.permutation(len(labels)))
        for start in range(0, len(labels), batch_size):
            batch = order[start : start + batch_size]
            optimizer.zero_grad()
            loss = criterion(model(images[batch]), labels[batch])
            losses.append(loss.item())
            (loss + torch_proximal_term(model, global_params, proximal_mu)).backward()
            optimizer.step()
    return float(np.mean(losses)) if losses else 0.0


@torch.no_grad()
def evaluate(model: Net, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Cross-entropy loss and accuracy."""
    model.eval()
    logits = model(as_images(x))
    labels = torch.tensor(np.asarray(y, np.int64))
    loss = nn.functional.cross_entropy(logits, labels).item()
    accuracy = (logits.argmax(dim=1) == labels).float().mean().item()
    return float(loss), float(accuracy)
