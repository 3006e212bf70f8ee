"""``torchrun tests/helpers/ddp_faulty.py FAULT ARGS...``: ``python -m mnist_demo train ARGS`` with one rank
made to fail, for tests/test_distributed.py. FAULT ``data``: rank 1 reads a truncated data file
(a bad file on one node); ``raise``: rank 1 raises in its second training step."""

from __future__ import annotations

import os
import sys

from mnist_demo.__main__ import app
from mnist_demo.train import Trainer

fault, *args = sys.argv[1:]
rank = int(os.environ["RANK"])
if rank == 1 and fault == "data":
    args += ["--data", os.environ["BAD_DATA_FILE"]]
if rank == 1 and fault == "raise":
    original = Trainer.train_epoch

    def failing(self, batches, *rest):
        def broken():
            for step, batch in enumerate(batches):
                if step == 1:
                    raise RuntimeError("injected failure on rank 1")
                yield batch

        return original(self, broken(), *rest)

    Trainer.train_epoch = failing
app(["train", *args])
