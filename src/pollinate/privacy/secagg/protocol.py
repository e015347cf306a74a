"""SecAgg+ as two sans-I/O state machines: one for the server, one for a node.

Bell, Bonawitz, Gascón, Lepoint, Raykova, "Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead", CCS 2020, https://eprint.iacr.org/2020/704, which makes
the protocol of Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving
Machine Learning", CCS 2017, https://eprint.iacr.org/2017/281, sparse: each node
masks with and secret-shares over only its neighbours in a ``k``-regular graph.

The stages (``U1 ⊇ U2 ⊇ U3`` are the nodes that completed each one)::

    setup          server -> params            node -> two X25519 public keys     (U1)
    share keys     server -> neighbours' keys  node -> encrypted Shamir shares of its
                                                       masking key and self-mask seed (U2)
    masked input   server -> shares for it     node -> y = x + PRG(b) + sum of
                   (+ the instruction)                 +-PRG(pairwise seeds)          (U3)
    unmask         server -> survivors and     node -> seed shares of survivors,
                   dropped among neighbours            key shares of dropped nodes

The server then removes survivors' self masks (reconstructing each ``b``) and the
masks survivors added for dropped neighbours (reconstructing each dropped node's
masking key), and is left with the sum of the survivors' inputs, nothing else.

Nothing here does I/O, reads a clock or keeps a thread: each method takes parsed
messages (:mod:`.messages`) and returns the messages to send, so the simulation, the
gRPC deployment and the tests drive the very same code. Timeouts belong to the
driver, which reports the nodes that missed a stage simply by their absence from the
replies. A :class:`NodeProtocol` serializes itself into a ConfigRecord so it can live
in ``Context.state`` between messages, in whatever process the node's next message
runs.

Threat model: an honest-but-curious server and any coalition of fewer than
``threshold`` nodes per neighbourhood learn nothing beyond the sum. Against a server
that lies, a node refuses to reveal both secrets of any peer in its own view (the
survivors and dropped lists must be disjoint, must not name the node itself, must
cover exactly the neighbours it masked with, and it answers one unmask request per
session). The signed consistency round of Bonawitz et al.'s actively secure variant
(which stops a server from telling *different* nodes different stories) is not
implemented.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from pollinate.errors import AggregationError, ConfigError, ProtocolError
from pollinate.privacy.secagg import crypto, shamir
from pollinate.privacy.secagg.graph import harary_graph
from pollinate.privacy.secagg.messages import (
    MaskedInputReply,
    MaskedInputRequest,
    RecordReader,
    SecAggParams,
    SetupReply,
    SetupRequest,
    ShareKeysReply,
    ShareKeysRequest,
    Stage,
    Structure,
    UnmaskReply,
    UnmaskRequest,
)
from pollinate.privacy.secagg.quantize import add_mod, mask_of, sub_mod
from pollinate.records import SUPPORTED_DTYPES, ConfigRecord

__all__ = [
    "NodeProtocol",
    "SecAggAbortedError",
    "SecAggSum",
    "ServerProtocol",
    "check_params",
]

_MASK_PURPOSE: Final = b"pollinate/secagg+/pairwise-mask/"
_SHARE_PURPOSE: Final = b"pollinate/secagg+/share-encryption/"
_ID_BYTES: Final = 8


class SecAggAbortedError(AggregationError):
    """A SecAgg+ round stopped: too many nodes dropped to unmask the sum safely.

    Raised by the server before it asks for any secret it could not use, so an
    aborted round never reveals an individual update.
    """


# -- settings ---------------------------------------------------------------------------
def check_params(params: SecAggParams, *, error: type[Exception] = ConfigError) -> None:
    """Raise ``error`` naming the first setting of ``params`` that cannot work."""
    problems = []
    if not isinstance(params.session, bytes) or len(params.session) != 16:
        problems.append("session must be 16 bytes")
    if params.threshold < 2:
        problems.append(f"reconstruction_threshold must be >= 2, got {params.threshold}")
    if not (math.isfinite(params.clipping_range) and params.clipping_range > 0):
        problems.append(f"clipping_range must be positive, got {params.clipping_range}")
    if params.quantization_range < 2:
        problems.append(f"quantization_range must be >= 2, got {params.quantization_range}")
    if not 8 <= params.modulus_bits <= 64:
        problems.append(f"modulus_bits must be within [8, 64], got {params.modulus_bits}")
    elif params.quantization_range > 1 << params.modulus_bits:
        problems.append(
            f"quantization_range {params.quantization_range} exceeds the modulus "
            f"2**{params.modulus_bits}"
        )
    if not (math.isfinite(params.max_weight) and params.max_weight > 0):
        problems.append(f"max_weight must be positive, got {params.max_weight}")
    if not (math.isfinite(params.noise_stddev) and params.noise_stddev >= 0):
        problems.append(f"noise_stddev must be >= 0, got {params.noise_stddev}")
    if not (math.isfinite(params.noise_clipping_norm) and params.noise_clipping_norm >= 0):
        problems.append(f"noise_clipping_norm must be >= 0, got {params.noise_clipping_norm}")
    if problems:
        raise error("SecAgg+ settings: " + "; ".join(problems))


def _id_bytes(node_id: int) -> bytes:
    return int(node_id).to_bytes(_ID_BYTES, "big", signed=True)


def _pair_purpose(purpose: bytes, session: bytes, a: int, b: int) -> bytes:
    """Key-derivation info for the pair ``{a, b}``: the same from either side."""
    low, high = sorted((a, b))
    return purpose + session + _id_bytes(low) + _id_bytes(high)


def _share_aad(session: bytes, src: int, dst: int) -> bytes:
    return b"pollinate/secagg+/shares/" + session + _id_bytes(src) + _id_bytes(dst)


def _pairwise_mask(
    private: bytes, peer_public: bytes, params: SecAggParams, me: int, peer: int, length: int
) -> NDArray[np.uint64]:
    purpose = _pair_purpose(_MASK_PURPOSE, params.session, me, peer)
    seed = crypto.agree(private, peer_public, purpose)
    return crypto.prg_uint(seed, length, params.modulus_bits)


# -- the node ---------------------------------------------------------------------------
class NodeProtocol:
    """One node's side of one SecAgg+ session.

    Create it with :meth:`setup`; then call :meth:`share_keys`, :meth:`receive_shares`,
    :meth:`mask` and :meth:`unmask` in that order, each with the server's request. A
    call out of order or a request that breaks the protocol raises
    :class:`~pollinate.errors.ProtocolError` and reveals nothing. Between calls the
    node keeps the object in its ``Context.state`` via :meth:`to_record` /
    :meth:`from_record`.

    Examples
    --------
    >>> import os
    >>> params = SecAggParams(session=os.urandom(16), threshold=2, clipping_range=1.0,
    ...     quantization_range=2**16, modulus_bits=32, max_weight=1.0, weighted=False,
    ...     arrays_key="arrays", metrics_key="metrics", weight_key="num-examples")
    >>> node, reply = NodeProtocol.setup(7, SetupRequest(params))
    >>> len(reply.encryption_key), node.stage
    (32, 'setup')
    """

    def __init__(
        self,
        node_id: int,
        params: SecAggParams,
        *,
        stage: str,
        encryption_key: bytes,
        masking_key: bytes,
        seed: bytes = b"",
        neighbours: Mapping[int, tuple[bytes, bytes]] | None = None,
        seed_shares: Mapping[int, bytes] | None = None,
        key_shares: Mapping[int, bytes] | None = None,
    ) -> None:
        self.node_id = node_id
        self.params = params
        self.stage = stage
        self._encryption_key = encryption_key
        self._masking_key = masking_key
        self._seed = seed
        self._neighbours = dict(neighbours or {})
        #: Shares this node holds of its neighbours' secrets, by neighbour.
        self._seed_shares = dict(seed_shares or {})
        self._key_shares = dict(key_shares or {})

    @classmethod
    def setup(cls, node_id: int, request: SetupRequest) -> tuple[NodeProtocol, SetupReply]:
        """Check the settings and make this session's two key pairs."""
        check_params(request.params, error=ProtocolError)
        encryption, masking = crypto.generate_key_pair(), crypto.generate_key_pair()
        node = cls(
            node_id,
            request.params,
            stage=Stage.SETUP,
            encryption_key=encryption.private,
            masking_key=masking.private,
        )
        return node, SetupReply(encryption.public, masking.public)

    def _expect(self, stage: str, action: str) -> None:
        if self.stage != stage:
            raise ProtocolError(
                f"node {self.node_id}: got a SecAgg+ {action} request in stage {self.stage!r} "
                f"(it must follow {stage!r}); refusing"
            )

    def share_keys(self, request: ShareKeysRequest) -> ShareKeysReply:
        """Shamir-share the masking key and a fresh self-mask seed over the neighbours,
        encrypting each neighbour's pair of shares to it."""
        self._expect(Stage.SETUP, "share-keys")
        neighbours = dict(request.neighbours)
        t = self.params.threshold
        if self.node_id in neighbours:
            raise ProtocolError(
                f"node {self.node_id}: the server lists this node as its own neighbour"
            )
        if len(neighbours) < t:
            raise ProtocolError(
                f"node {self.node_id}: only {len(neighbours)} neighbours for a reconstruction "
                f"threshold of {t}; refusing to share secrets that could not be recovered"
            )
        own_keys = {
            crypto.KeyPair(self._encryption_key).public,
            crypto.KeyPair(self._masking_key).public,
        }
        for peer, (enc, mask) in neighbours.items():
            if len(enc) != crypto.KEY_BYTES or len(mask) != crypto.KEY_BYTES:
                raise ProtocolError(f"node {self.node_id}: neighbour {peer}'s keys are malformed")
            if enc in own_keys or mask in own_keys:
                raise ProtocolError(
                    f"node {self.node_id}: neighbour {peer} has this node's own public key"
                )
        self._seed = crypto.random_seed()
        ids = sorted(neighbours)
        seed_shares = shamir.split(self._seed, ids, t)
        key_shares = shamir.split(self._masking_key, ids, t)
        ciphertexts = {}
        for peer in ids:
            key = crypto.agree(
                self._encryption_key,
                neighbours[peer][0],
                _pair_purpose(_SHARE_PURPOSE, self.params.session, self.node_id, peer),
            )
            header = _id_bytes(self.node_id) + _id_bytes(peer)
            plaintext = header + seed_shares[peer] + key_shares[peer]
            ciphertexts[peer] = crypto.encrypt(
                key, plaintext, _share_aad(self.params.session, self.node_id, peer)
            )
        self._neighbours = neighbours
        self.stage = Stage.SHARE_KEYS
        return ShareKeysReply(ciphertexts)

    def receive_shares(self, request: MaskedInputRequest) -> None:
        """Decrypt and keep the shares the neighbours sent; they define whom to mask with.

        Called before the node trains, so a broken request costs no training.
        """
        self._expect(Stage.SHARE_KEYS, "masked-input")
        unknown = sorted(set(request.ciphertexts) - set(self._neighbours))
        if unknown:
            raise ProtocolError(
                f"node {self.node_id}: shares from {unknown}, which are not its neighbours"
            )
        if len(request.ciphertexts) < self.params.threshold:
            raise ProtocolError(
                f"node {self.node_id}: shares from only {len(request.ciphertexts)} neighbours, "
                f"fewer than the threshold {self.params.threshold}; refusing to send an input "
                "that could not be unmasked"
            )
        size = shamir.SHARE_BYTES
        for peer, ciphertext in request.ciphertexts.items():
            key = crypto.agree(
                self._encryption_key,
                self._neighbours[peer][0],
                _pair_purpose(_SHARE_PURPOSE, self.params.session, peer, self.node_id),
            )
            plaintext = crypto.decrypt(
                key, ciphertext, _share_aad(self.params.session, peer, self.node_id)
            )
            header = _id_bytes(peer) + _id_bytes(self.node_id)
            if len(plaintext) != 2 * _ID_BYTES + 2 * size or not plaintext.startswith(header):
                raise ProtocolError(f"node {self.node_id}: the shares from {peer} are malformed")
            body = plaintext[2 * _ID_BYTES :]
            self._seed_shares[peer] = body[:size]
            self._key_shares[peer] = body[size:]
        self.stage = Stage.MASKED_INPUT

    def mask(self, vector: NDArray[np.uint64], structure: Structure) -> MaskedInputReply:
        """Add the self mask and the pairwise masks to a quantized update."""
        self._expect(Stage.MASKED_INPUT, "mask")
        bits = self.params.modulus_bits
        masked = np.array(vector, dtype=np.uint64)  # a private, writable copy
        if masked.ndim != 1 or (masked.size and int(masked.max()) > int(mask_of(bits))):
            raise ProtocolError("the quantized update must be a 1-d vector below the modulus")
        add_mod(masked, crypto.prg_uint(self._seed, masked.size, bits), bits)
        for peer in self._seed_shares:
            pairwise = _pairwise_mask(
                self._masking_key,
                self._neighbours[peer][1],
                self.params,
                self.node_id,
                peer,
                masked.size,
            )
            if self.node_id < peer:
                add_mod(masked, pairwise, bits)
            else:
                sub_mod(masked, pairwise, bits)
        self.stage = Stage.UNMASK
        wire = np.uint32 if bits <= 32 else np.uint64
        return MaskedInputReply(masked.astype(wire), structure)

    def unmask(self, request: UnmaskRequest) -> UnmaskReply:
        """Reveal survivors' seed shares and dropped nodes' key shares, never both of one.

        The lists must be disjoint, must not name this node, and together must be
        exactly the neighbours whose shares this node masked with. After answering, the
        session is over: a second unmask request fails the stage check.
        """
        self._expect(Stage.UNMASK, "unmask")
        survivors, dropped = set(request.survivors), set(request.dropped)
        view = set(self._seed_shares)
        problems = []
        if len(survivors) != len(request.survivors) or len(dropped) != len(request.dropped):
            problems.append("a node is listed twice")
        if survivors & dropped:
            problems.append(f"{sorted(survivors & dropped)} are listed as survivors and dropped")
        if self.node_id in survivors | dropped:
            problems.append("this node is listed among its own neighbours")
        if (survivors | dropped) != view:
            problems.append(
                f"the lists name {sorted(survivors | dropped)} but this node masked with "
                f"{sorted(view)}"
            )
        if problems:
            self.stage = "refused"
            raise ProtocolError(f"node {self.node_id}: refusing to unmask: " + "; ".join(problems))
        self.stage = "done"
        return UnmaskReply(
            {peer: self._seed_shares[peer] for peer in sorted(survivors)},
            {peer: self._key_shares[peer] for peer in sorted(dropped)},
        )

    # -- persistence ----------------------------------------------------------------------
    def to_record(self) -> ConfigRecord:
        """Everything this node needs for its next stage, as a ConfigRecord."""
        p = self.params
        peers = sorted(self._neighbours)
        held = sorted(self._seed_shares)
        return ConfigRecord(
            {
                "node-id": self.node_id,
                "stage": self.stage,
                "session": p.session,
                "params": [
                    p.threshold,
                    p.quantization_range,
                    p.modulus_bits,
                ],
                "params-float": [
                    float(p.clipping_range),
                    float(p.max_weight),
                    float(p.noise_stddev),
                    float(p.noise_clipping_norm),
                ],
                "params-str": [p.arrays_key, p.metrics_key, p.weight_key],
                "weighted": p.weighted,
                "delta": p.delta,
                "encryption-key": self._encryption_key,
                "masking-key": self._masking_key,
                "seed": self._seed,
                "neighbours": peers,
                "neighbour-encryption-keys": [self._neighbours[n][0] for n in peers],
                "neighbour-masking-keys": [self._neighbours[n][1] for n in peers],
                "held": held,
                "held-seed-shares": [self._seed_shares[n] for n in held],
                "held-key-shares": [self._key_shares[n] for n in held],
            }
        )

    @classmethod
    def from_record(cls, record: ConfigRecord) -> NodeProtocol:
        """Rebuild a node saved with :meth:`to_record`; ProtocolError if it is damaged."""
        read = RecordReader(record, "the saved SecAgg+ node state")
        ints = read.ints("params")
        floats = read.get("params-float", list)
        strs = read.strs("params-str")
        if len(ints) != 3 or len(floats) != 4 or len(strs) != 3:
            raise ProtocolError("the saved SecAgg+ node state has the wrong number of settings")
        params = SecAggParams(
            session=read.get("session", bytes),
            threshold=ints[0],
            quantization_range=ints[1],
            modulus_bits=ints[2],
            clipping_range=float(floats[0]),
            max_weight=float(floats[1]),
            noise_stddev=float(floats[2]),
            noise_clipping_norm=float(floats[3]),
            arrays_key=strs[0],
            metrics_key=strs[1],
            weight_key=strs[2],
            weighted=read.get("weighted", bool),
            delta=read.get("delta", bool),
        )
        peers = read.ints("neighbours")
        held = read.ints("held")
        return cls(
            read.get("node-id", int),
            params,
            stage=read.get("stage", str),
            encryption_key=read.get("encryption-key", bytes),
            masking_key=read.get("masking-key", bytes),
            seed=read.get("seed", bytes),
            neighbours=dict(
                zip(
                    peers,
                    zip(
                        read.blobs("neighbour-encryption-keys", len(peers)),
                        read.blobs("neighbour-masking-keys", len(peers)),
                        strict=True,
                    ),
                    strict=True,
                )
            ),
            seed_shares=dict(zip(held, read.blobs("held-seed-shares", len(held)), strict=True)),
            key_shares=dict(zip(held, read.blobs("held-key-shares", len(held)), strict=True)),
        )


# -- the server -------------------------------------------------------------------------
@dataclass
class SecAggSum:
    """What unmasking yields: the modular sum of the survivors' quantized inputs."""

    total: NDArray[np.uint64]
    structure: Structure
    survivors: list[int]
    dropped: dict[int, str] = field(default_factory=dict)


class ServerProtocol:
    """The server's side of one SecAgg+ session over ``node_ids``.

    Call :meth:`setup`, then feed each stage's replies to the matching ``receive_*``
    method, which returns the next stage's requests (by node id) or, at the end, the
    :class:`SecAggSum`. Nodes missing from a stage's replies (they failed, timed out,
    or sent something malformed) are dropped; :attr:`dropped` says why. When too
    many have dropped for the sum to be unmasked, the method raises
    :class:`SecAggAbortedError` before asking anyone for a secret.

    Parameters
    ----------
    params:
        The session's settings (sent to every node).
    node_ids:
        The sampled nodes.
    num_shares:
        The graph degree ``k``: each node shares its secrets with ``k`` neighbours
        (at most ``len(node_ids) - 1``: the complete graph of the original SecAgg).
    rng:
        Draws the graph.
    """

    def __init__(
        self,
        params: SecAggParams,
        node_ids: Sequence[int],
        *,
        num_shares: int,
        rng: np.random.Generator,
    ) -> None:
        check_params(params)
        ids = sorted(int(n) for n in node_ids)
        n = len(ids)
        t = params.threshold
        if n < t:
            raise ConfigError(f"SecAgg+ needs at least reconstruction_threshold={t} nodes, got {n}")
        # The sum of n inputs in [0, levels - 1] must stay below the modulus.
        if n * (params.quantization_range - 1) >= 1 << params.modulus_bits:
            raise ConfigError(
                f"{n} nodes x quantization_range {params.quantization_range} overflows the "
                f"modulus 2**{params.modulus_bits}; raise modulus_bits or lower "
                "quantization_range"
            )
        degree = min(num_shares, n - 1)
        if degree < t:
            raise ConfigError(
                f"each of {n} nodes gets {degree} neighbours (num_shares={num_shares}), "
                f"fewer than reconstruction_threshold={t}; lower the threshold or sample "
                "more nodes"
            )
        self.params = params
        self.node_ids = ids
        self.graph = harary_graph(ids, degree, rng)
        self.stage = Stage.SETUP
        #: Why each dropped node was dropped (stage and reason).
        self.dropped: dict[int, str] = {}
        self._keys: dict[int, tuple[bytes, bytes]] = {}
        self._told: dict[int, frozenset[int]] = {}
        self._u2: set[int] = set()
        self._total: NDArray[np.uint64] | None = None
        self._structure: Structure | None = None
        self._u3: set[int] = set()
        self._started = False

    # -- helpers ------------------------------------------------------------------------
    def drop(self, node: int, reason: str) -> None:
        """Count ``node`` out from this stage on (the driver reports failed replies here,
        so :attr:`dropped` keeps their reason); the first reason given is kept."""
        if node in self.node_ids:
            self.dropped.setdefault(node, f"{self.stage}: {reason}")

    def _missing(self, expected: Iterable[int], replied: Mapping[int, Any]) -> None:
        for node in expected:
            if node not in replied:
                self.drop(node, "no reply")

    def _abort(self, detail: str) -> SecAggAbortedError:
        first = "; ".join(f"node {n}: {r}" for n, r in list(self.dropped.items())[:5])
        if self.stage == Stage.SETUP:
            detail += " (every node must run the SecAgg+ mod: ClientApp(mods=[secaggplus_mod]))"
        self.stage = "aborted"
        return SecAggAbortedError(
            f"SecAgg+ aborted: {detail}. Dropped {len(self.dropped)} of {len(self.node_ids)} "
            f"nodes ({first or 'none'}). No individual update was revealed. Sample more nodes, "
            "raise num_shares, lower reconstruction_threshold, or give stages more time."
        )

    def _prune(self, alive: set[int], what: str) -> set[int]:
        """Drop nodes with fewer than ``threshold`` live neighbours until none is left."""
        t = self.params.threshold
        changed = True
        while changed:
            changed = False
            for node in sorted(alive):
                if len(self.graph[node] & alive) < t:
                    alive.discard(node)
                    self.drop(node, f"fewer than {t} of its neighbours {what}")
                    changed = True
        if len(alive) < t:
            raise self._abort(f"only {len(alive)} nodes {what}, the threshold is {t}")
        return alive

    def _expect(self, stage: str) -> None:
        if self.stage != stage:
            raise ProtocolError(f"the SecAgg+ server is in stage {self.stage!r}, not {stage!r}")

    # -- stages -------------------------------------------------------------------------
    def setup(self) -> dict[int, SetupRequest]:
        """The setup request of every sampled node."""
        self._expect(Stage.SETUP)
        if self._started:
            raise ProtocolError("the SecAgg+ setup requests were already made")
        self._started = True
        request = SetupRequest(self.params)
        return {node: request for node in self.node_ids}

    def receive_setup(self, replies: Mapping[int, SetupReply]) -> dict[int, ShareKeysRequest]:
        """Public keys in; each live node's neighbours (with their keys) out."""
        self._expect(Stage.SETUP)
        self._missing(self.node_ids, replies)
        seen: set[bytes] = set()
        for node in self.node_ids:
            reply = replies.get(node)
            if reply is None:
                continue
            pair = (reply.encryption_key, reply.masking_key)
            malformed = any(len(k) != crypto.KEY_BYTES for k in pair)
            if malformed or seen & set(pair) or pair[0] == pair[1]:
                self.drop(node, "malformed or reused public keys")
                continue
            seen.update(pair)
            self._keys[node] = pair
        alive = self._prune(set(self._keys), "completed setup")
        self.stage = Stage.SHARE_KEYS
        requests = {}
        for node in sorted(alive):
            peers = self.graph[node] & alive
            self._told[node] = frozenset(peers)
            requests[node] = ShareKeysRequest({p: self._keys[p] for p in sorted(peers)})
        return requests

    def receive_shares(
        self, replies: Mapping[int, ShareKeysReply]
    ) -> dict[int, MaskedInputRequest]:
        """Encrypted shares in; each live node's shares (from live senders) out."""
        self._expect(Stage.SHARE_KEYS)
        self._missing(self._told, replies)
        good: dict[int, Mapping[int, bytes]] = {}
        for node, reply in replies.items():
            if node not in self._told:
                continue
            if set(reply.ciphertexts) != self._told[node]:
                self.drop(node, "its shares are not addressed to exactly its neighbours")
                continue
            good[node] = reply.ciphertexts
        self._u2 = self._prune(set(good), "sent their shares")
        self.stage = Stage.MASKED_INPUT
        return {
            node: MaskedInputRequest(
                {peer: good[peer][node] for peer in sorted(self.graph[node] & self._u2)}
            )
            for node in sorted(self._u2)
        }

    def add_masked_input(self, node: int, reply: MaskedInputReply) -> bool:
        """Fold one masked input into the running sum (O(model) memory for any number
        of nodes); returns whether it was accepted."""
        self._expect(Stage.MASKED_INPUT)
        if node not in self._u2 or node in self._u3:
            return False
        if self._structure is None:
            try:
                _check_structure(reply.structure, reply.vector.size, self.params.weighted)
            except ProtocolError as exc:
                self.drop(node, str(exc))
                return False
            self._structure = reply.structure
            self._total = np.zeros(reply.vector.size, np.uint64)
        elif reply.structure != self._structure or reply.vector.size != len(self._total):  # type: ignore[arg-type]
            self.drop(node, "its update has another structure than the first one received")
            return False
        vector = reply.vector.astype(np.uint64)
        if vector.size and int(vector.max()) > int(mask_of(self.params.modulus_bits)):
            self.drop(node, "its masked input is not below the modulus")
            return False
        assert self._total is not None
        add_mod(self._total, vector, self.params.modulus_bits)
        self._u3.add(node)
        return True

    def receive_masked_inputs(
        self, replies: Mapping[int, MaskedInputReply] | None = None
    ) -> dict[int, UnmaskRequest]:
        """Close the masked-input stage (after :meth:`add_masked_input` or with all
        ``replies`` at once) and ask the survivors for the shares unmasking needs.

        Raises SecAggAbortedError, without asking for any share, when the secrets to
        reconstruct would not have ``threshold`` surviving holders each.
        """
        for node, reply in (replies or {}).items():
            self.add_masked_input(node, reply)
        self._expect(Stage.MASKED_INPUT)
        self._missing(self._u2, {n: None for n in self._u3})
        t = self.params.threshold
        survivors, dropped = self._u3, self._u2 - self._u3
        if len(survivors) < t:
            raise self._abort(f"only {len(survivors)} masked inputs arrived, the threshold is {t}")
        for node in sorted(self._u2):
            holders = len(self.graph[node] & survivors)
            if (node in survivors or holders) and holders < t:
                role = "self mask" if node in survivors else "pairwise masks"
                raise self._abort(
                    f"node {node}'s {role} can only be removed with {t} shares, but only "
                    f"{holders} of its neighbours sent their inputs"
                )
        self.stage = Stage.UNMASK
        return {
            node: UnmaskRequest(
                tuple(sorted(self.graph[node] & survivors)),
                tuple(sorted(self.graph[node] & dropped)),
            )
            for node in sorted(survivors)
        }

    def receive_unmask(self, replies: Mapping[int, UnmaskReply]) -> SecAggSum:
        """Shares in; the unmasked sum out. SecAggAbortedError if shares are too few."""
        self._expect(Stage.UNMASK)
        assert self._total is not None and self._structure is not None
        survivors, dropped = self._u3, self._u2 - self._u3
        seed_shares: dict[int, dict[int, bytes]] = {n: {} for n in survivors}
        key_shares: dict[int, dict[int, bytes]] = {n: {} for n in dropped}
        unanswered = set(survivors)
        for node, reply in sorted(replies.items()):
            if node not in survivors:
                continue
            if (
                set(reply.seed_shares) != self.graph[node] & survivors
                or set(reply.key_shares) != self.graph[node] & dropped
            ):
                continue  # answered something else than asked: ignore its shares
            unanswered.discard(node)
            for peer, share in reply.seed_shares.items():
                seed_shares[peer][node] = share
            for peer, share in reply.key_shares.items():
                key_shares[peer][node] = share
        t = self.params.threshold
        short = [n for n, s in seed_shares.items() if len(s) < t]
        short += [n for n, s in key_shares.items() if self.graph[n] & survivors and len(s) < t]
        if short:
            raise self._abort(
                f"{len(unanswered)} survivors did not answer the unmask stage, leaving "
                f"fewer than {t} shares for the secrets of nodes {sorted(short)[:10]}"
            )
        bits = self.params.modulus_bits
        total = self._total.copy()
        length = total.size
        for node in sorted(survivors):
            seed = shamir.combine(seed_shares[node], t)
            sub_mod(total, crypto.prg_uint(seed, length, bits), bits)
        for node in sorted(dropped):
            peers = self.graph[node] & survivors
            if not peers:
                continue
            key = shamir.combine(key_shares[node], t)
            if crypto.KeyPair(key).public != self._keys[node][1]:
                raise self._abort(f"the key shares of node {node} are inconsistent")
            for peer in sorted(peers):
                mask = _pairwise_mask(key, self._keys[peer][1], self.params, node, peer, length)
                # The survivor ``peer`` added +mask if peer < node, else -mask.
                if peer < node:
                    sub_mod(total, mask, bits)
                else:
                    add_mod(total, mask, bits)
        self.stage = "done"
        return SecAggSum(total, list(self._structure), sorted(survivors), dict(self.dropped))

    @property
    def survivors(self) -> list[int]:
        """The nodes whose inputs are in the sum (known after the masked-input stage)."""
        return sorted(self._u3)


def _check_structure(structure: Structure, length: int, weighted: bool) -> None:
    size = 0
    for name, dtype, shape in structure:
        if dtype not in SUPPORTED_DTYPES:
            raise ProtocolError(f"array {name!r} has dtype {dtype!r}, which cannot travel")
        size += math.prod(shape)
    if size + int(weighted) != length:
        raise ProtocolError(
            f"its structure has {size} entries but its vector {length} "
            f"(expected {size + int(weighted)})"
        )
