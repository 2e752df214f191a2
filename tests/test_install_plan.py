"""scripts/install_plan.py: every combination of the facts gives a safe plan, without touching the network."""

import ast
import importlib.util
import itertools
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "install_plan.py"
spec = importlib.util.spec_from_file_location("install_plan", SCRIPT)
install_plan = importlib.util.module_from_spec(spec)
sys.modules["install_plan"] = install_plan  # dataclasses look their module up
spec.loader.exec_module(install_plan)
Environment, Interpreter, Plan, Stop = install_plan.Environment, install_plan.Interpreter, install_plan.Plan, install_plan.Stop

SYSTEM = "/usr/bin/python3"
VENV = "/project/.venv"


def interpreter(path=SYSTEM, version=(3, 11), in_venv=False, managed=False, pip=True, venv=True, torch=None):
    return Interpreter(path, version, in_venv, managed, pip, venv, torch, False)


def environments():
    """Every combination of the facts the plan may depend on."""
    for (version, in_venv, managed, pip, can_venv, torch, project, gpu, root, apt) in itertools.product(
        [(3, 8), (3, 11)], [False, True], [False, True], [False, True], [False, True], [None, "2.13.0"],
        ["missing", "broken", "without torch", "with torch"], [False, True], [False, True], [False, True],
    ):
        if in_venv and managed:
            continue  # PEP 668: a virtual environment is never externally managed
        current = interpreter(version=version, in_venv=in_venv, managed=managed, pip=pip, venv=can_venv, torch=torch)
        project_venv = None
        if project in ("without torch", "with torch"):
            project_venv = interpreter(f"{VENV}/bin/python", version, True, False, True, False,
                                       "2.4.0" if project == "with torch" else None)
        yield Environment(current, project_venv, project == "broken", gpu, root, apt)


ALL = list(environments())


def test_the_combinations_are_all_there():
    assert len(ALL) == 2 * 3 * 2 * 2 * 2 * 4 * 2 * 2 * 2


def test_plan_is_safe_for_every_environment():
    for env in ALL:
        try:
            check_plan(env)
        except AssertionError as error:
            raise AssertionError(f"{env}: {error}") from error


def check_plan(env):
    result = install_plan.plan(env, venv_path=VENV)
    current = env.current
    if current.version < (3, 10):
        assert isinstance(result, Stop) and "Python >= 3.10" in result.message
        return
    if current.externally_managed:
        # never pip-install into the system Python: the project environment, or stop with the fix
        if isinstance(result, Stop):
            assert env.project_venv is None
            if env.project_venv_broken:
                assert f"rm -r {VENV}" in result.message
            else:
                assert not current.can_create_venv
                expected = ("" if env.is_root else "sudo ") + "apt-get install python3-venv python3-pip"
                assert (expected in result.message) == env.has_apt
            return
        assert not env.project_venv_broken
        assert result.python.startswith(VENV + "/") and result.python != current.path
        assert result.create_venv == (env.project_venv is None)
        target_torch = env.project_venv.torch if env.project_venv else None
    else:
        if not current.has_pip:
            assert isinstance(result, Stop) and "pip is missing" in result.message
            assert ("apt-get install python3-venv python3-pip" in result.message) == env.has_apt
            return
        # a virtual, conda or otherwise writable environment is used as it is, whatever lies in .venv
        assert isinstance(result, Plan) and result.python == current.path and not result.create_venv
        target_torch = current.torch
    expected_torch = "keep" if target_torch else ("gpu" if env.nvidia_gpu else "cpu")
    assert result.torch == expected_torch
    assert result.notes, "the plan says where it installs"


@pytest.mark.parametrize("kind", ["keep", "gpu", "cpu"])
@pytest.mark.parametrize("pulls_cuda", [False, True, None])
def test_torch_sources(kind, pulls_cuda):
    sources = install_plan.torch_sources(kind, pulls_cuda)
    if kind == "keep":
        assert sources == []
        return
    uses_cpu_index = [install_plan.CPU_INDEX in source.pip_args for source in sources]
    if kind == "gpu" or pulls_cuda is False:
        # the default index: the CUDA build for a GPU, or already the CPU build (as on this machine and in CI)
        assert uses_cpu_index == [False]
    else:
        # the CPU index first, quickly given up on (it may be unreachable), then the default index
        assert uses_cpu_index == [True, False]
        args = sources[0].pip_args
        assert args[args.index("--retries") + 1] == "0" and int(args[args.index("--timeout") + 1]) <= 30
    assert all(install_plan.TORCH in source.description for source in sources)
    assert {"gpu": "GB", "cpu": "MB"}[kind] in sources[0].description, "say how large the download is"


def report(*names):
    return {"install": [{"metadata": {"name": name, "version": "1"}} for name in names]}


def test_pulls_cuda_reads_pips_report():
    assert install_plan.pulls_cuda(report("torch", "nvidia-cudnn-cu13", "filelock"))
    assert install_plan.pulls_cuda(report("torch", "triton"))
    assert not install_plan.pulls_cuda(report("torch", "sympy", "networkx", "filelock"))
    assert not install_plan.pulls_cuda(report())


def test_probe_of_a_venv_without_pip(tmp_path):
    """The real probe on a real interpreter: a fresh venv is a venv, writable, without pip or torch."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True)
    probed = install_plan.probe_interpreter(str(tmp_path / "venv" / "bin" / "python"), tmp_path)
    assert probed.in_venv and not probed.externally_managed and not probed.has_pip
    assert probed.torch is None and not probed.prdit_here and probed.version == sys.version_info[:2]
    assert install_plan.probe_interpreter(str(tmp_path / "missing"), tmp_path) is None


def test_probe_of_this_interpreter_sees_its_torch():
    import torch

    probed = install_plan.probe_interpreter(sys.executable, SCRIPT.parent.parent)
    assert probed.torch == torch.__version__ and probed.has_pip
    assert probed.in_venv == (sys.prefix != sys.base_prefix)


def test_the_script_uses_the_standard_library_only():
    """It runs before anything is installed."""
    tree = ast.parse(SCRIPT.read_text())
    modules = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    modules |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 0}
    assert modules and modules <= set(sys.stdlib_module_names), modules - set(sys.stdlib_module_names)
