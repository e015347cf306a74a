"""Wire keys: the names both ends of a message agree on.

Strategies and ClientApps use these constants instead of string literals, so a typo is
a NameError at import time rather than a silently missing value at round 17.
"""

from __future__ import annotations

from typing import Final

# Message types (``Message.metadata.message_type``); sub-actions append ``.name``.
TRAIN: Final = "train"
EVALUATE: Final = "evaluate"
QUERY: Final = "query"
MESSAGE_TYPES: Final = (TRAIN, EVALUATE, QUERY)

# Keys inside a message's RecordDict.
ARRAYS: Final = "arrays"
METRICS: Final = "metrics"
CONFIG: Final = "config"

# Keys inside the ConfigRecord a strategy sends.
SERVER_ROUND: Final = "server-round"
PROXIMAL_MU: Final = "proximal-mu"  # FedProx: weight of the proximal term
LOCAL_EPOCHS: Final = "local-epochs"  # epochs of local training asked for
LEARNING_RATE: Final = "learning-rate"  # the nodes' local step size
Q: Final = "q"  # q-FedAvg: the fairness exponent

# Keys inside the MetricRecord a node returns.
NUM_EXAMPLES: Final = "num-examples"
TRAIN_LOSS: Final = "train-loss"
LOCAL_STEPS: Final = "local-steps"  # local optimizer steps taken (FedNova)
COMPLETED_FRACTION: Final = "completed-fraction"  # share of the asked work done (stragglers)
INITIAL_LOSS: Final = "initial-loss"  # loss of the received global model (q-FedAvg)

# Names of extra ArrayRecords in instructions and replies.
CONTROL: Final = "control"  # SCAFFOLD: the server control variate
CONTROL_DELTA: Final = "control-delta"  # SCAFFOLD: a node's change of its control variate

# Keys of the node_config a simulation gives each virtual node.
PARTITION_ID: Final = "partition-id"
NUM_PARTITIONS: Final = "num-partitions"
