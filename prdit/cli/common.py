"""What every ``prdit`` command shares: config arguments, ``--device`` (alias ``--gpu_id``), the error mapper and
the OpenMP wait policy."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

from prdit.errors import PrditError

# How often a waiting OpenMP thread checks for work before it sleeps (GNU libgomp, the OpenMP of torch's Linux
# wheels; tens of microseconds). Sleeping at once (PASSIVE alone) wakes the threads for every operation, which made
# the demo's training steps 14-41% slower on 2 idle cores; spinning for milliseconds (libgomp's default) or 30000
# times burned a busy machine's cores (numbers in prdit/runtime.py).
OPENMP_SPIN_COUNT = 1000


def set_openmp_waiting() -> None:
    """Before torch loads OpenMP: threads waiting at a barrier spin briefly, then sleep, instead of spinning for
    milliseconds on cores that a busy machine's other threads need. An OMP_WAIT_POLICY (or GOMP_SPINCOUNT) of your own
    is kept; once torch is loaded the setting would come too late, and would only mislead prdit.runtime. The command
    (and so the demo) sets it for its own process; ``import prdit`` leaves a host program's environment alone."""
    if "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ:
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    os.environ.setdefault("GOMP_SPINCOUNT", str(OPENMP_SPIN_COUNT))


def add_config_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--config", required=required, help="YAML config, e.g. configs/phantom/local.yaml")
    parser.add_argument(
        "overrides", nargs="*", metavar="section.key=value", help="config overrides, e.g. training.lr=3e-4 data.image_size=64"
    )


def add_device_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup, default: str | None = "auto") -> None:
    """``--device`` and its seed-compatible alias ``--gpu_id N`` (a CUDA index, -1 for the CPU); see ``prdit.runtime.resolve_device``."""
    parser.add_argument("--device", "--gpu_id", dest="device", default=default,
                        help="auto (cuda when available), cpu, cuda, cuda:1, or a GPU index as the seed scripts' "
                             "--gpu_id (-1: CPU; an index without CUDA runs on the CPU) (default auto)")


def run_command(func: Callable[[argparse.Namespace], None], args: argparse.Namespace, prog: str = "prdit") -> int:
    """Run a command's function; bad input becomes one ``PROG: error: ...`` line and exit status 2."""
    try:
        func(args)
    except (PrditError, FileExistsError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a full disk or read-only folder outside prdit's own writes: still one line
        from prdit.io import storage_error

        storage = storage_error(error, error.filename or "an output file")
        if storage is None:
            raise
        print(f"{prog}: error: {storage}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return 0
