"""A test app whose ServerApp hands its run token to the test, to play a rogue ServerApp.

The ServerApp writes the run's GridIo token to ``token-file``, then waits until a file
``<token-file>.done`` appears (at most ``hold-seconds``) so the run, and its token, stay
valid while the test calls GridIo with it.
"""

import os
import time
from pathlib import Path

from pollinate import ClientApp, ServerApp

client = ClientApp()
server = ServerApp()


@server.main()
def main(grid, context):
    target = Path(str(context.run_config["token-file"]))
    partial = target.with_name(target.name + ".partial")
    partial.write_text(os.environ["POLLINATE_RUN_TOKEN"])
    partial.replace(target)
    print("token written", flush=True)
    done = target.with_name(target.name + ".done")
    deadline = time.monotonic() + float(context.run_config["hold-seconds"])
    while not done.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    print("released", flush=True)
