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

# Keys inside the MetricRecord a node returns.
NUM_EXAMPLES: Final = "num-examples"

# Keys of the node_config a simulation gives each virtual node.
PARTITION_ID: Final = "partition-id"
NUM_PARTITIONS: Final = "num-partitions"
