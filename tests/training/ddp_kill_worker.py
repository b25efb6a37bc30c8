"""`tokenunify` as torchrun starts it, except that rank 1 kills itself (SIGKILL) when it draws batch 3.

The stand-in for a node lost mid-run: test_ddp.py checks that torchrun then
stops rank 0 too and reports the failure, and that `--resume` continues
from the last checkpoint as if nothing had happened.
"""

from __future__ import annotations

import os
import signal

from tokenunify import cli
from tokenunify.finetune import train as train_module

real_make_batch = train_module.make_batch
calls = {"n": 0}


def make_batch_or_die(*args, **kwargs):
    calls["n"] += 1
    if calls["n"] == 3 and os.environ.get("RANK") == "1":
        os.kill(os.getpid(), signal.SIGKILL)
    return real_make_batch(*args, **kwargs)


train_module.make_batch = make_batch_or_die
cli.main()
