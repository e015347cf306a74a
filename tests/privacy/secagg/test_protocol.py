"""The sans-I/O state machines, driven in memory: sums, dropouts, aborts, refusals."""

from __future__ import annotations

import os
from collections.abc import Set

import numpy as np
import pytest

from pollinate.errors import ConfigError, ProtocolError
from pollinate.privacy.secagg import NodeProtocol, SecAggAbortedError, ServerProtocol
from pollinate.privacy.secagg.encoding import encode_update
from pollinate.privacy.secagg.inmemory import run_locally
from pollinate.privacy.secagg.messages import (
    SECAGG,
    MaskedInputRequest,
    SecAggParams,
    SetupRequest,
    ShareKeysRequest,
    Stage,
    UnmaskRequest,
    from_content,
    to_content,
)
from pollinate.records import ArrayRecord, ConfigRecord, RecordDict
from pollinate.serde import recorddict_from_bytes, recorddict_to_bytes

LEVELS = 2**20


def _params(threshold: int = 4, *, weighted: bool = False, bits: int = 32) -> SecAggParams:
    return SecAggParams(
        session=os.urandom(16),
        threshold=threshold,
        clipping_range=1.0,
        quantization_range=LEVELS,
        modulus_bits=bits,
        max_weight=100.0,
        weighted=weighted,
        arrays_key="arrays",
        metrics_key="metrics",
        weight_key="num-examples",
    )


def _updates(n: int, seed: int = 0) -> dict[int, ArrayRecord]:
    rng = np.random.default_rng(seed)
    return {
        node: ArrayRecord(
            {"w": rng.uniform(-1, 1, (3, 4)).astype(np.float32), "b": rng.uniform(-1, 1, 5)}
        )
        for node in range(1, n + 1)
    }


def _step(params: SecAggParams) -> float:
    return 2 * params.clipping_range / (params.quantization_range - 1)


def _assert_sum(
    run_sum: ArrayRecord, updates: dict[int, ArrayRecord], nodes: Set[int], tol: float
) -> None:
    for name in ("w", "b"):
        expected = sum(updates[n][name].astype(np.float64) for n in nodes)
        np.testing.assert_allclose(run_sum[name], expected, atol=tol, rtol=0)


@pytest.mark.parametrize("bits", [32, 64])
def test_the_sum_equals_the_plain_sum_within_quantization_error(bits: int) -> None:
    updates, params = _updates(10), _params(bits=bits)

    run = run_locally(updates, params, num_shares=6, rng=np.random.default_rng(0))

    assert run.server.survivors == list(range(1, 11))
    _assert_sum(run.result.arrays, updates, set(updates), tol=10 * _step(params))
    assert run.result.count == 10


def test_the_weighted_mean_equals_the_plain_weighted_mean() -> None:
    updates, params = _updates(8), _params(weighted=True)
    weights = {node: float(5 * node) for node in updates}

    run = run_locally(updates, params, num_shares=7, rng=np.random.default_rng(1), weights=weights)

    total = sum(weights.values())
    assert run.result.weight == pytest.approx(total, abs=8 * 100 * _step(params))
    mean = run.result.mean(params)
    for name in ("w", "b"):
        expected = sum(weights[n] * updates[n][name].astype(np.float64) for n in updates) / total
        np.testing.assert_allclose(mean[name], expected, atol=1e-4)


# Complete graph on 8 nodes (7 neighbours each), threshold 4: 3 dropouts are survivable.
@pytest.mark.parametrize("stage", Stage.ALL)
def test_dropouts_up_to_the_threshold_are_survived_at_every_stage(stage: str) -> None:
    updates, params = _updates(8), _params(threshold=4)
    dropped = {2, 5, 7}

    run = run_locally(
        updates, params, num_shares=7, rng=np.random.default_rng(2), drop={stage: dropped}
    )

    # Nodes that dropped only at the unmask stage had sent their input: it counts.
    included = set(updates) if stage == Stage.UNMASK else set(updates) - dropped
    assert set(run.server.survivors) == included
    _assert_sum(run.result.arrays, updates, included, tol=8 * _step(params))


def test_dropouts_spread_over_stages_on_a_sparse_graph_are_survived() -> None:
    updates, params = _updates(30), _params(threshold=4)
    drop = {Stage.SETUP: {1}, Stage.SHARE_KEYS: {12}, Stage.MASKED_INPUT: {24}, Stage.UNMASK: {7}}

    run = run_locally(updates, params, num_shares=8, rng=np.random.default_rng(3), drop=drop)

    included = set(updates) - {1, 12, 24}
    assert set(run.server.survivors) == included
    assert set(run.server.dropped) >= {1, 12, 24}
    _assert_sum(run.result.arrays, updates, included, tol=30 * _step(params))


@pytest.mark.parametrize("stage", Stage.ALL)
def test_past_the_threshold_the_round_aborts_without_revealing_secrets(stage: str) -> None:
    updates, params = _updates(8), _params(threshold=4)
    transcript: list[tuple[str, int, RecordDict]] = []

    with pytest.raises(SecAggAbortedError, match=r"aborted.*No individual update was revealed"):
        run_locally(
            updates,
            params,
            num_shares=7,
            rng=np.random.default_rng(4),
            drop={stage: {1, 2, 3, 4}},
            transcript=transcript,
        )

    unmask = [content for s, _, content in transcript if s == Stage.UNMASK]
    if stage != Stage.UNMASK:
        assert unmask == []  # aborted before asking anyone for a share
    else:
        # Only survivors' seed shares were asked for, never a key share: the self masks
        # the server could rebuild leave every input under its pairwise masks.
        counts: dict[int, int] = {}
        for content in unmask:
            assert content[SECAGG]["key-shares.ids"] == []  # type: ignore[index]
            for node in content[SECAGG]["seed-shares.ids"]:  # type: ignore[union-attr]
                counts[node] = counts.get(node, 0) + 1
        assert min(counts.values()) < 4  # why it aborted


def test_the_server_rejects_settings_that_cannot_work() -> None:
    with pytest.raises(ConfigError, match="fewer than reconstruction_threshold"):
        ServerProtocol(
            _params(threshold=5), [1, 2, 3, 4, 5], num_shares=3, rng=np.random.default_rng()
        )
    with pytest.raises(ConfigError, match="overflows the modulus"):
        ServerProtocol(_params(bits=20), range(1, 10), num_shares=4, rng=np.random.default_rng())
    with pytest.raises(ConfigError, match="at least reconstruction_threshold=4 nodes"):
        ServerProtocol(_params(), [1, 2, 3], num_shares=4, rng=np.random.default_rng())


# -- a node's own checks -------------------------------------------------------------------


class _Session:
    """Four nodes taken through setup and share keys by hand, ready to mask."""

    def __init__(self, n: int = 4, threshold: int = 3) -> None:
        self.params = _params(threshold=threshold)
        self.server = ServerProtocol(
            self.params, range(1, n + 1), num_shares=n - 1, rng=np.random.default_rng(0)
        )
        self.nodes: dict[int, NodeProtocol] = {}
        keys = {}
        for node, request in self.server.setup().items():
            self.nodes[node], keys[node] = NodeProtocol.setup(node, request)
        self.share_requests = self.server.receive_setup(keys)
        shares = {n: self.nodes[n].share_keys(r) for n, r in self.share_requests.items()}
        self.masked_requests = self.server.receive_shares(shares)

    def mask_all(self) -> dict[int, UnmaskRequest]:
        for node, request in self.masked_requests.items():
            self.nodes[node].receive_shares(request)
            vector, structure = encode_update(ArrayRecord({"x": np.zeros(3)}), self.params)
            self.server.add_masked_input(node, self.nodes[node].mask(vector, structure))
        return self.server.receive_masked_inputs()


def test_a_node_refuses_to_reveal_both_secrets_of_a_peer() -> None:
    session = _Session()
    requests = session.mask_all()
    node = session.nodes[1]

    with pytest.raises(
        ProtocolError, match=r"refusing to unmask: \[2\] are listed as survivors and dropped"
    ):
        node.unmask(UnmaskRequest(survivors=(2, 3, 4), dropped=(2,)))
    # Once it refused, the session is over for that node, even for an honest request.
    with pytest.raises(ProtocolError, match="stage 'refused'"):
        node.unmask(requests[1])


@pytest.mark.parametrize(
    ("survivors", "dropped", "reason"),
    [
        ((1, 2, 3, 4), (), "this node is listed among its own neighbours"),
        ((2, 3), (), r"the lists name \[2, 3\] but this node masked with \[2, 3, 4\]"),
        ((2, 3, 4, 9), (), "masked with"),
        ((2, 2, 3, 4), (), "listed twice"),
    ],
)
def test_a_node_refuses_unmask_lists_inconsistent_with_its_view(
    survivors: tuple[int, ...], dropped: tuple[int, ...], reason: str
) -> None:
    session = _Session()
    session.mask_all()

    with pytest.raises(ProtocolError, match=reason):
        session.nodes[1].unmask(UnmaskRequest(survivors, dropped))


def test_a_node_answers_one_unmask_request_per_session() -> None:
    session = _Session()
    requests = session.mask_all()
    node = session.nodes[1]
    reply = node.unmask(requests[1])
    assert set(reply.seed_shares) == {2, 3, 4} and reply.key_shares == {}

    # The server now claims 2 dropped, to get its key share as well: refused.
    with pytest.raises(ProtocolError, match="stage 'done'"):
        node.unmask(UnmaskRequest(survivors=(3, 4), dropped=(2,)))


def test_a_node_checks_the_shares_it_is_sent() -> None:
    session = _Session()
    ciphertexts = dict(session.masked_requests[1].ciphertexts)

    # A share meant for node 2 forwarded to node 1 fails authentication.
    wrong = dict(ciphertexts)
    wrong[3] = session.masked_requests[2].ciphertexts[3]
    with pytest.raises(ProtocolError, match="failed authentication"):
        session.nodes[1].receive_shares(MaskedInputRequest(wrong))
    with pytest.raises(ProtocolError, match=r"shares from \[9\], which are not its neighbours"):
        session.nodes[2].receive_shares(
            MaskedInputRequest({**session.masked_requests[2].ciphertexts, 9: b"x" * 60})
        )
    with pytest.raises(ProtocolError, match="fewer than the threshold 3"):
        session.nodes[3].receive_shares(
            MaskedInputRequest({1: session.masked_requests[3].ciphertexts[1]})
        )


def test_a_node_refuses_too_few_neighbours_and_out_of_order_requests() -> None:
    params = _params(threshold=3)
    node, _ = NodeProtocol.setup(1, SetupRequest(params))
    other, keys = NodeProtocol.setup(2, SetupRequest(params))

    with pytest.raises(
        ProtocolError, match="only 1 neighbours for a reconstruction threshold of 3"
    ):
        node.share_keys(ShareKeysRequest({2: (keys.encryption_key, keys.masking_key)}))
    with pytest.raises(ProtocolError, match="unmask request in stage 'setup'"):
        other.unmask(UnmaskRequest((1,), ()))
    with pytest.raises(ProtocolError, match=r"settings.*reconstruction_threshold must be >= 2"):
        NodeProtocol.setup(3, SetupRequest(_params(threshold=1)))


def test_node_state_survives_serialization_between_every_stage() -> None:
    # As in the process runtime: the node is rebuilt from bytes before each stage.
    def reload(node: NodeProtocol) -> NodeProtocol:
        record = recorddict_from_bytes(recorddict_to_bytes(RecordDict({"s": node.to_record()})))
        saved = record["s"]
        assert isinstance(saved, ConfigRecord)
        return NodeProtocol.from_record(saved)

    params = _params(threshold=2)
    updates = _updates(3)
    server = ServerProtocol(params, [1, 2, 3], num_shares=2, rng=np.random.default_rng(0))
    nodes, keys = {}, {}
    for n, request in server.setup().items():
        nodes[n], keys[n] = NodeProtocol.setup(n, request)
    requests = server.receive_setup(keys)
    shares = {}
    for n, request in requests.items():
        node = reload(nodes[n])
        shares[n] = node.share_keys(request)
        nodes[n] = reload(node)
    masked = server.receive_shares(shares)
    for n, request in masked.items():
        node = reload(nodes[n])
        node.receive_shares(request)
        node = reload(node)
        server.add_masked_input(n, node.mask(*encode_update(updates[n], params)))
        nodes[n] = reload(node)
    unmask = server.receive_masked_inputs()
    total = server.receive_unmask({n: nodes[n].unmask(r) for n, r in unmask.items()})

    from pollinate.privacy.secagg.encoding import decode_sum

    result = decode_sum(total.total, total.structure, 3, params)
    _assert_sum(result.arrays, updates, {1, 2, 3}, tol=3 * _step(params))


def test_damaged_node_state_is_a_protocol_error() -> None:
    node, _ = NodeProtocol.setup(1, SetupRequest(_params()))
    record = node.to_record()
    record["params"] = [1, 2]
    with pytest.raises(ProtocolError, match="wrong number of settings"):
        NodeProtocol.from_record(record)
    record = node.to_record()
    del record["masking-key"]
    with pytest.raises(ProtocolError, match="'masking-key' is NoneType, expected bytes"):
        NodeProtocol.from_record(record)


# -- the wire ------------------------------------------------------------------------------


def test_stage_messages_round_trip_through_records_and_bytes() -> None:
    session = _Session()
    for request in (
        SetupRequest(session.params),
        session.share_requests[1],
        session.masked_requests[2],
        UnmaskRequest((2, 3), (4,)),
    ):
        content = recorddict_from_bytes(recorddict_to_bytes(to_content(request)))
        assert from_content(content, type(request)) == request


def test_malformed_stage_messages_name_the_field() -> None:
    content = to_content(UnmaskRequest((2, 3), (4,)))
    content[SECAGG]["survivors"] = ["2"]  # type: ignore[index]
    with pytest.raises(ProtocolError, match="field 'survivors' must be a list of ints"):
        from_content(content, UnmaskRequest)
    with pytest.raises(
        ProtocolError, match="expected a SecAgg\\+ SetupRequest, got a UnmaskRequest"
    ):
        from_content(content, SetupRequest)
    with pytest.raises(ProtocolError, match="has the node the secaggplus_mod"):
        from_content(RecordDict(), SetupRequest)
