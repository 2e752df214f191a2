"""Install prdit into the right Python environment, then optionally run the demo or the tests.

    bash scripts/install.sh --demo [demo flags]     install, then `prdit demo`
    bash scripts/install.sh --test [pytest flags]   install with the test extra, then `pytest -q`
    bash scripts/install.sh [--dev]                 install only (--dev: with the test and documentation extras)

This file runs before anything is installed, so it uses the standard library only. What it does is decided by
``plan`` and ``torch_sources``, pure functions of facts about the machine (tested for every combination in
``tests/test_install_plan.py``); ``main`` gathers the facts, prints the plan and carries it out.

- Where to install: into the running Python when it is a virtual or conda environment or otherwise allowed;
  when it is externally managed (PEP 668: Debian's and Ubuntu's system Python), into the project's ``.venv``,
  created on first use. If venv or pip is missing, the exact ``apt-get`` line is printed.
- torch: a torch that is already there is kept. Otherwise torch==2.13.0: the default (CUDA) build where an NVIDIA
  GPU is present; elsewhere the CPU build. PyPI's torch for Linux x86-64 is the CUDA build (a 530 MB wheel plus
  about 2.5 GB of NVIDIA libraries), so pip is first asked, without downloading, what the default index would
  install (``--dry-run --report``); only when that pulls NVIDIA packages is the PyTorch CPU index asked (short
  timeout, no retries), with the default index as the fallback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

TORCH = "torch==2.13.0"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
MIN_PYTHON = (3, 10)
PROJECT_VENV = ".venv"
# Download sizes (Linux x86-64, Python 3.11; measured with `pip download`): the CPU wheel of torch 2.13.0 is
# 192 MB; the CUDA build is a 527 MB wheel plus NVIDIA libraries (cuDNN, cuBLAS, NCCL, ...), about 3 GB in all.
# prdit's other dependencies (numpy, scipy, SimpleITK, MONAI, matplotlib, ...) are about 150 MB.
SIZE_TORCH_CPU = "about 190 MB"
SIZE_TORCH_CUDA = "about 3 GB: a 530 MB wheel plus the NVIDIA CUDA libraries"
SIZE_DEPENDENCIES = "about 150 MB on a first install"
APT_PACKAGES = "python3-venv python3-pip"


@dataclass(frozen=True)
class Interpreter:
    """Facts about one Python interpreter."""

    path: str
    version: Tuple[int, int]
    in_venv: bool  # a virtual environment (sys.prefix != sys.base_prefix)
    externally_managed: bool  # PEP 668: pip refuses to install into it
    has_pip: bool
    can_create_venv: bool  # venv and ensurepip are both there (Debian splits them into python3-venv)
    torch: Optional[str]  # installed torch version, None when missing
    prdit_here: bool  # prdit is installed in editable mode from this checkout


@dataclass(frozen=True)
class Environment:
    """Everything the install depends on."""

    current: Interpreter  # the python3 that runs this script
    project_venv: Optional[Interpreter]  # .venv when it exists and runs
    project_venv_broken: bool  # .venv exists but its python does not run
    nvidia_gpu: bool
    is_root: bool
    has_apt: bool  # Debian / Ubuntu


@dataclass(frozen=True)
class Plan:
    python: str  # the interpreter to install into and run with
    create_venv: bool
    torch: str  # "keep", "gpu" (default build) or "cpu" (the CPU build, see torch_sources)
    quiet: bool  # prdit is already installed from here: pip only checks the dependencies
    notes: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Stop:
    """The install cannot go on; ``message`` says what to do."""

    message: str


@dataclass(frozen=True)
class TorchSource:
    description: str
    pip_args: Tuple[str, ...] = field(default_factory=tuple)


def apt_line(env: Environment) -> str:
    return ("" if env.is_root else "sudo ") + f"apt-get install {APT_PACKAGES}"


def plan(env: Environment, venv_path: str = PROJECT_VENV) -> Union[Plan, Stop]:
    """Where and what to install. Pure: the same facts always give the same plan."""
    current = env.current
    version = ".".join(map(str, current.version))
    if current.version < MIN_PYTHON:
        return Stop(f"prdit needs Python >= {'.'.join(map(str, MIN_PYTHON))}; {current.path} is Python {version}. "
                    "Run this script with a newer one: PYTHON=python3.11 bash scripts/install.sh ...")
    if not current.externally_managed:
        if not current.has_pip:
            fix = apt_line(env) if env.has_apt else f"{current.path} -m ensurepip --upgrade"
            return Stop(f"pip is missing for {current.path}; install it with:\n    {fix}")
        kind = "virtual environment" if current.in_venv else "environment"
        notes = (f"installing into the current {kind}: {current.path} (Python {version})",)
        return Plan(current.path, False, _torch_kind(current, env), current.prdit_here, notes)

    managed = f"{current.path} (Python {version}) is externally managed (PEP 668), so pip may not install into it"
    if env.project_venv_broken:
        return Stop(f"{managed}, and the project environment {venv_path} exists but its python does not run; "
                    f"remove it (rm -r {venv_path}) and run this again")
    if env.project_venv is not None:
        venv = env.project_venv
        note = f"{managed}: using the project environment {venv_path}"
        return Plan(venv.path, False, _torch_kind(venv, env), venv.prdit_here, (note,))
    if not current.can_create_venv:
        return Stop(f"{managed}, and it cannot create the project environment {venv_path}: "
                    f"venv or pip is missing. Install them with:\n    {apt_line(env) if env.has_apt else 'your system package manager (python3-venv, python3-pip)'}\n"
                    "then run this again")
    fresh = Interpreter(os.path.join(venv_path, "bin", "python"), current.version, True, False, True, False, None, False)
    note = f"{managed}: creating the project environment {venv_path} (activate it later with: source {venv_path}/bin/activate)"
    return Plan(fresh.path, True, _torch_kind(fresh, env), False, (note,))


def _torch_kind(target: Interpreter, env: Environment) -> str:
    if target.torch is not None:
        return "keep"
    return "gpu" if env.nvidia_gpu else "cpu"


def torch_sources(kind: str, default_pulls_cuda: Optional[bool]) -> List[TorchSource]:
    """Where to get torch, in order of preference. ``default_pulls_cuda``: whether the default index would
    install NVIDIA packages with torch (None: pip could not tell)."""
    if kind == "keep":
        return []
    if kind == "gpu":
        return [TorchSource(f"{TORCH}, default build with CUDA for the NVIDIA GPU ({SIZE_TORCH_CUDA})")]
    if default_pulls_cuda is False:
        return [TorchSource(f"{TORCH}, CPU build from the default index ({SIZE_TORCH_CPU})")]
    cpu_index = TorchSource(f"{TORCH}, CPU build from the PyTorch CPU index ({SIZE_TORCH_CPU})",
                            ("--index-url", CPU_INDEX, "--timeout", "15", "--retries", "0"))
    what = f"the CUDA build ({SIZE_TORCH_CUDA})" if default_pulls_cuda else "whichever build it offers"
    fallback = TorchSource(f"{TORCH} from the default index, {what}")
    return [cpu_index, fallback]


def pulls_cuda(report: dict) -> bool:
    """Whether a ``pip install --report`` would install NVIDIA CUDA packages."""
    names = [item["metadata"]["name"].lower() for item in report.get("install", [])]
    return any(name.startswith("nvidia-") or name == "triton" for name in names)


# ----------------------------------------------------------------------------------------------------------
# Facts (side effects: runs interpreters and nvidia-smi, reads files)
# ----------------------------------------------------------------------------------------------------------

_PROBE = r"""
import importlib.util, json, os, sys, sysconfig
from importlib import metadata
def version(name):
    try:
        return metadata.version(name)
    except Exception:
        return None
def prdit_source():  # an editable install's source folder ("" if none); a source tree's prdit.egg-info has none
    for dist in metadata.distributions(name="prdit"):
        info = json.loads(dist.read_text("direct_url.json") or "{}")
        if info.get("dir_info", {}).get("editable"):
            return info.get("url", "")
    return ""
in_venv = sys.prefix != getattr(sys, "base_prefix", sys.prefix)
marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
print(json.dumps({
    "path": sys.executable, "version": list(sys.version_info[:2]), "in_venv": in_venv,
    "externally_managed": (not in_venv) and os.path.isfile(marker),
    "has_pip": importlib.util.find_spec("pip") is not None,
    "can_create_venv": all(importlib.util.find_spec(m) is not None for m in ("venv", "ensurepip")),
    "torch": version("torch"), "prdit_source": prdit_source(),
}))
"""


def probe_interpreter(python: str, project: Path) -> Optional[Interpreter]:
    try:
        out = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=60, check=True).stdout
        facts = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    source, _ = facts.pop("prdit_source"), facts.pop("path")
    here = source.startswith("file://") and Path(source[len("file://"):]).resolve() == project.resolve()
    return Interpreter(path=python, version=tuple(facts.pop("version")), prdit_here=here, **facts)


def has_nvidia_gpu() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def probe_environment(project: Path) -> Environment:
    current = probe_interpreter(sys.executable, project)
    assert current is not None, "the running interpreter must answer the probe"
    venv_python = project / PROJECT_VENV / "bin" / "python"
    venv = probe_interpreter(str(venv_python), project) if venv_python.exists() else None
    return Environment(
        current=current,
        project_venv=venv,
        project_venv_broken=(project / PROJECT_VENV).exists() and venv is None,
        nvidia_gpu=has_nvidia_gpu(),
        is_root=hasattr(os, "geteuid") and os.geteuid() == 0,
        has_apt=shutil.which("apt-get") is not None,
    )


def default_index_pulls_cuda(python: str) -> Optional[bool]:
    """Ask pip what the default index would install for torch, downloading metadata only (pip >= 22.2)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        command = [python, "-m", "pip", "install", "--dry-run", "--quiet", "--disable-pip-version-check",
                   "--timeout", "30", "--report", str(report), TORCH]
        try:
            subprocess.run(command, capture_output=True, timeout=300, check=True)
            return pulls_cuda(json.loads(report.read_text()))
        except (OSError, subprocess.SubprocessError, ValueError):
            return None


# ----------------------------------------------------------------------------------------------------------
# Carrying out the plan
# ----------------------------------------------------------------------------------------------------------


def say(message: str) -> None:
    print(f"[install] {message}", flush=True)


def pip(python: str, args: Sequence[str], quiet: bool = False) -> bool:
    command = [python, "-m", "pip", "install", "--disable-pip-version-check", *(["--quiet"] if quiet else []), *args]
    return subprocess.run(command).returncode == 0


def install(project: Path, dev: bool) -> str:
    """Install prdit (and torch when missing); returns the interpreter that has it. Exits on failure."""
    decision = plan(probe_environment(project), venv_path=str(project / PROJECT_VENV))
    if isinstance(decision, Stop):
        print(f"[install] error: {decision.message}", file=sys.stderr)
        sys.exit(1)
    for note in decision.notes:
        say(note)
    if decision.create_venv:
        say(f"creating {PROJECT_VENV} with {sys.executable} -m venv")
        subprocess.run([sys.executable, "-m", "venv", str(project / PROJECT_VENV)], check=True)
    python = decision.python

    if decision.torch == "keep":
        target = probe_interpreter(python, project)
        say(f"torch {target.torch if target else ''} is already installed: keeping it")
    else:
        pulls = default_index_pulls_cuda(python) if decision.torch == "cpu" else None
        if decision.torch == "cpu":
            say("no NVIDIA GPU; the default index offers " + {True: "the CUDA build of torch here",
                False: "the CPU build of torch here", None: "an unknown build (pip could not tell)"}[pulls])
        for number, source in enumerate(torch_sources(decision.torch, pulls)):
            say(("installing " if number == 0 else "that failed; now trying ") + source.description)
            if pip(python, [TORCH, *source.pip_args]):
                break
        else:
            print(f"[install] error: torch could not be installed; install {TORCH} yourself "
                  f"(https://pytorch.org/get-started/locally/) and run this again", file=sys.stderr)
            sys.exit(1)

    extras = "[dev,docs]" if dev else ""
    say(f"installing prdit (editable) and its dependencies{extras and ' with the test and documentation extras'} "
        f"({'already installed: checking' if decision.quiet else SIZE_DEPENDENCIES})")
    if not pip(python, ["-e", f"{project}{extras}"], quiet=decision.quiet):
        sys.exit(1)
    check = "import prdit, torch; print(f'[install] prdit {prdit.__version__} with torch {torch.__version__} in ' + __import__('sys').prefix)"
    subprocess.run([python, "-c", check], check=True)
    return python


def main(argv: Sequence[str]) -> None:
    project = Path(__file__).resolve().parent.parent
    argv = list(argv)
    action = argv.pop(0) if argv and argv[0] in ("--demo", "--test", "--dev") else None
    if action is None and argv:
        sys.exit(f"usage: bash scripts/install.sh [--dev | --demo [demo flags] | --test [pytest flags]] (got {argv[0]!r})")
    python = install(project, dev=action in ("--dev", "--test"))
    os.chdir(project)
    if action == "--demo":
        os.execv(python, [python, "-m", "prdit", "demo", *argv])
    if action == "--test":
        os.execv(python, [python, "-m", "pytest", "-q", *argv])
    if os.path.dirname(python) != os.path.dirname(sys.executable):
        say(f"to use prdit in your shell: source {os.path.relpath(os.path.dirname(os.path.dirname(python)))}/bin/activate")


if __name__ == "__main__":
    main(sys.argv[1:])
