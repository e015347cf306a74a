"""What runs in each hospital: answer analytics queries from its own patient records.

No row ever leaves the hospital: each query is answered with a few numbers (a count,
a mean, histogram counts), and a hospital declines any query that matches fewer than
MIN_COUNT of its patients.
"""

from __future__ import annotations

from hospitals.data import patient_records
from pollinate import ClientApp, Context
from pollinate.analytics import Table, handle_queries

#: This hospital's policy: never answer about fewer patients than this.
MIN_COUNT = 10

app = ClientApp()


def patient_table(context: Context) -> Table:
    """This hospital's records (generated here; a real node would read its database)."""
    return patient_records(
        int(context.node_config["partition-id"]), int(context.run_config["seed"])
    )


handle_queries(app, patient_table, min_count=MIN_COUNT)
