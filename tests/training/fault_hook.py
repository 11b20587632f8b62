"""Run `python -m training` with a fault point in the checkpoint writer (test-side injection, no product hook).

FAULT_MODE=before_fsync: the temporary file is written but not synced or renamed.
FAULT_MODE=between_renames: last.pt has become last.prev.pt, the new file is not yet renamed to last.pt.
At the FAULT_AT-th save of last.pt the process prints FAULT-POINT to stderr and waits to be killed.
"""
import os
import runpy
import sys
import time

MODE, AT = os.environ["FAULT_MODE"], int(os.environ["FAULT_AT"])
saves = 0
real_fsync, real_replace = os.fsync, os.replace


def _stop_here():
    print("FAULT-POINT", file=sys.stderr, flush=True)
    time.sleep(120)


def fsync(fd):
    global saves
    if MODE == "before_fsync" and os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(".last.pt."):
        saves += 1
        if saves == AT:
            _stop_here()
    return real_fsync(fd)


def replace(src, dst, *args, **kwargs):
    global saves
    real_replace(src, dst, *args, **kwargs)
    if MODE == "between_renames" and os.path.basename(str(dst)) == "last.prev.pt":
        saves += 1
        if saves == AT:
            _stop_here()


os.fsync, os.replace = fsync, replace
sys.argv = ["training", *sys.argv[1:]]
runpy.run_module("training", run_name="__main__", alter_sys=True)
