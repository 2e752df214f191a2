"""prdit.train: the training loop (:mod:`prdit.train.trainer`) and what it runs on (batches, EMA, DDP/FSDP,
sharded checkpoints, the run log).

The package itself is callable: ``prdit.train(config, options)`` is :func:`prdit.train.trainer.train`, so the
top-level ``prdit.train(...)`` of the README works whether or not a submodule has been imported (importing
``prdit.train.trainer`` binds the name ``prdit.train`` to this package, which would otherwise hide the function).
"""

from __future__ import annotations

import sys
import types


class _TrainPackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from prdit.train.trainer import train

        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _TrainPackage
