"""What the server sees: its whole transcript, checked for leaks.

Each masked input must be indistinguishable from uniform noise (chi-square and
Kolmogorov-Smirnov tests, which do reject the unmasked inputs), and even with every
secret the transcript lets it reconstruct, no individual update comes out.
"""

from __future__ import annotations

import os

import numpy as np
from scipy import stats

from pollinate.privacy.secagg import crypto, shamir
from pollinate.privacy.secagg.encoding import encode_update
from pollinate.privacy.secagg.inmemory import run_locally
from pollinate.privacy.secagg.messages import (
    MASKED,
    SECAGG,
    MaskedInputReply,
    SecAggParams,
    Stage,
    from_content,
)
from pollinate.records import ArrayRecord

# p-values below this reject uniformity; a uniform input fails it once in a million.
ALPHA = 1e-6
BITS = 32


def _params() -> SecAggParams:
    return SecAggParams(
        session=os.urandom(16),
        threshold=4,
        clipping_range=1.0,
        quantization_range=2**16,
        modulus_bits=BITS,
        max_weight=1.0,
        weighted=False,
        arrays_key="arrays",
        metrics_key="metrics",
        weight_key="num-examples",
    )


def _uniformity_p_values(vector: np.ndarray) -> tuple[float, float, float]:
    """Chi-square on the top 6 bits, chi-square on the low 6 bits, KS on [0, 1)."""
    top = np.bincount((vector >> np.uint64(BITS - 6)).astype(np.int64), minlength=64)
    low = np.bincount((vector & np.uint64(63)).astype(np.int64), minlength=64)
    ks = stats.kstest(vector.astype(np.float64) / 2**BITS, "uniform").pvalue
    return stats.chisquare(top).pvalue, stats.chisquare(low).pvalue, ks


def _run() -> tuple[object, dict[int, ArrayRecord], SecAggParams]:
    params = _params()
    # Highly structured updates: every node sends nearly the same smooth ramp.
    updates = {
        node: ArrayRecord({"w": np.linspace(-0.5, 0.5, 8192) + 0.01 * node})
        for node in range(1, 11)
    }
    run = run_locally(
        updates,
        params,
        num_shares=6,
        rng=np.random.default_rng(0),
        drop={Stage.MASKED_INPUT: {3}},
    )
    return run, updates, params


def test_every_masked_input_is_indistinguishable_from_uniform() -> None:
    run, updates, params = _run()
    masked = [
        (node, content[MASKED]["vector"].astype(np.uint64))  # type: ignore[index]
        for stage, node, content in run.transcript  # type: ignore[attr-defined]
        if stage == Stage.MASKED_INPUT
    ]
    assert len(masked) == 9

    for _, vector in masked:
        assert min(_uniformity_p_values(vector)) > ALPHA
    # The tests have power: the same statistics reject an unmasked input outright.
    plain, _ = encode_update(updates[1], params)
    assert max(_uniformity_p_values(plain)) < ALPHA


def test_no_individual_update_can_be_recovered_from_the_transcript() -> None:
    run, updates, params = _run()
    seed_shares: dict[int, dict[int, bytes]] = {}
    key_shares: dict[int, dict[int, bytes]] = {}
    masked: dict[int, np.ndarray] = {}
    for stage, node, content in run.transcript:  # type: ignore[attr-defined]
        if stage == Stage.MASKED_INPUT:
            masked[node] = from_content(content, MaskedInputReply).vector
        if stage == Stage.UNMASK:
            record = content[SECAGG]
            for name, table in (("seed-shares", seed_shares), ("key-shares", key_shares)):
                for peer, share in zip(
                    record[f"{name}.ids"], record[f"{name}.values"], strict=True
                ):  # type: ignore[index]
                    table.setdefault(peer, {})[node] = share

    # Never both secrets of one node: self-mask seeds of survivors, keys of the dropped.
    assert not set(seed_shares) & set(key_shares)
    assert set(key_shares) == {3} and 3 not in masked  # the dropped node sent no input

    # The strongest attack the transcript allows: strip a survivor's self mask.
    for node, vector in masked.items():
        seed = shamir.combine(seed_shares[node], params.threshold)
        stripped = (vector - crypto.prg_uint(seed, vector.size, BITS)) & np.uint64(2**BITS - 1)
        plain, _ = encode_update(updates[node], params)
        # Its pairwise masks remain: still uniform, nowhere near the update.
        assert min(_uniformity_p_values(stripped)) > ALPHA
        assert np.mean(stripped == plain) < 0.001
