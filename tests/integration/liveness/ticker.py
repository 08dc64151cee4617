"""The run every liveness test runs: it notes its own start, life and end, so tests judge from the runs themselves.

``python ticker.py SECONDS RECORDS`` appends lines ``RUN ATTEMPT PID GPUS WHAT TIME`` to RECORDS
(``start``, then ``alive`` every 0.1 s, then ``end``): a killed attempt's last ``alive`` is when it
was last seen alive. Appends of one short line are atomic, so many runs share one file.
"""

import os
import sys
import time

seconds, path = float(sys.argv[1]), sys.argv[2]
me = " ".join(
    (
        os.environ["RUNYARD_RUN_ID"],
        os.environ["RUNYARD_ATTEMPT"],
        str(os.getpid()),
        os.environ.get("CUDA_VISIBLE_DEVICES") or "-",
    )
)
with open(path, "a", buffering=1) as out:

    def note(what: str) -> None:
        out.write(f"{me} {what} {time.time():.6f}\n")

    note("start")
    print(f"started {me}", flush=True)
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        time.sleep(0.1)
        note("alive")
    note("end")
    print(f"ended {me}", flush=True)
