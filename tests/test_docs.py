"""The documentation does not rot: every code block of README.md and docs/*.md is run or checked, the site builds
with ``mkdocs build --strict``, and the README keeps its contract (the two set-up commands first, under 10 KB).

The convention (docs/architecture.md, "Writing documentation"): ```python blocks are executed in order, one
namespace per page, in a temporary folder that sees the repository's prdit/ and configs/; in ```bash blocks every
``prdit``, ``python train.py``, ``python sample.py``, ``python evaluations/*.py`` and ``torchrun ...`` command is
parsed by prdit's own argument parser and the config it names is loaded with its overrides; a block preceded by
``<!-- illustrative -->`` (or with another info string) is not run.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
ILLUSTRATIVE = "<!-- illustrative -->"
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,})(?P<info>[\w+-]*)\s*$")
SEPARATORS = {"&&", "||", ";", "|", "&"}


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    info: str
    code: str
    illustrative: bool


def code_blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page (indented ones inside admonitions included)."""
    lines = page.read_text().splitlines()
    blocks, index = [], 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        previous = next((line.strip() for line in reversed(lines[:index]) if line.strip()), "")
        end = next((j for j in range(index + 1, len(lines)) if lines[j].strip() == fence), None)
        assert end is not None, f"{page}:{index + 1}: code block never closed"
        code = "\n".join(line[len(indent):] for line in lines[index + 1:end])
        blocks.append(Block(page, index + 1, opening["info"], code, previous == ILLUSTRATIVE))
        index = end + 1
    return blocks


def runnable(kind: str) -> list[Block]:
    return [block for page in PAGES for block in code_blocks(page) if block.info == kind and not block.illustrative]


def shell_commands(code: str) -> list[list[str]]:
    """Each simple command of a bash block as its words (continuation lines joined, comments dropped)."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        command: list[str] = []
        for word in [*lexer, ";"]:
            if word in SEPARATORS:
                if command:
                    commands.append(command)
                command = []
            elif command or "=" not in word or word.startswith("-"):  # leading VAR=value assignments are not words
                command.append(word)
    return commands


def prdit_arguments(words: list[str]) -> list[str] | None:
    """The ``prdit`` arguments a command amounts to, or None when it is not a prdit command."""
    if words[0] == "prdit":
        return words[1:]
    if words[0] == "torchrun":
        script = next((i for i, word in enumerate(words) if word.endswith(".py")), None)
        assert script is not None, f"torchrun without a script: {shlex.join(words)}"
        words = ["python", *words[script:]]
    if words[0] in ("python", "python3") and len(words) > 1 and words[1].endswith(".py"):
        script = words[1]
        if script in ("train.py", "sample.py"):
            return [script[:-3], *words[2:]]
        if script.startswith("evaluations/"):
            metric = re.search(r'script_main\("(\w+)"\)', (ROOT / script).read_text())
            assert metric, f"{script} does not call script_main"
            return ["evaluate", metric[1], *words[2:]]
    return None


def check_prdit_command(arguments: list[str]) -> None:
    """Parse the arguments as the ``prdit`` command would (no work is done) and validate the config they name."""
    from prdit.cli import build_parser
    from prdit.config import load_config

    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            args = build_parser().parse_args(arguments)
    except SystemExit:
        pytest.fail(f"prdit {shlex.join(arguments)}: {errors.getvalue().strip().splitlines()[-1]}")
    assert getattr(args, "func", None), f"prdit {shlex.join(arguments)}: not a complete command"
    if getattr(args, "config", None):
        config = ROOT / args.config
        assert config.is_file(), f"prdit {shlex.join(arguments)}: the config {args.config} does not exist"
        load_config(config, getattr(args, "overrides", None) or [])


def block_id(block: Block) -> str:
    return f"{block.page.relative_to(ROOT)}:{block.line}"


@pytest.mark.parametrize("block", runnable("bash"), ids=block_id)
def test_the_prdit_commands_of_every_bash_block_parse(block):
    for words in shell_commands(block.code):
        arguments = prdit_arguments(words)
        if arguments is not None:
            check_prdit_command(arguments)


PYTHON_PAGES = sorted({block.page for block in runnable("python")})


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_the_python_blocks_of_every_page_run(page, tmp_path, monkeypatch, one_thread):
    for name in ("prdit", "configs"):
        (tmp_path / name).symlink_to(ROOT / name)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for block in runnable("python"):
        if block.page == page:
            exec(compile(block.code, block_id(block), "exec"), namespace)


def test_the_checker_catches_bad_commands_and_finds_every_kind_of_command():
    with pytest.raises(pytest.fail.Exception, match="unrecognized arguments: --no-such-flag"):
        check_prdit_command(["sample", "--ckpt", "x.pt", "--no-such-flag"])
    with pytest.raises(pytest.fail.Exception, match="required"):
        check_prdit_command(["restore", "xray", "--views", "2"])
    with pytest.raises(Exception, match="training.ckpt_every"):
        check_prdit_command(["train", "--config", "configs/phantom/local.yaml", "training.ckpt_every=5"])
    code = ("cd x && prdit data phantom --out d   # a comment\n"
            "OMP_NUM_THREADS=1 torchrun --nproc_per_node=2 train.py --config c.yaml \\\n    --debug\n"
            "python evaluations/wgan_gp.py --eval; python -m benchmarks.bench_quality --minutes 1\n")
    found = [prdit_arguments(words) for words in shell_commands(code)]
    assert found == [None, ["data", "phantom", "--out", "d"], ["train", "--config", "c.yaml", "--debug"],
                     ["evaluate", "wgan", "--eval"], None]


def test_illustrative_blocks_are_marked_and_every_page_has_checked_code():
    marked = [block for page in PAGES for block in code_blocks(page) if block.illustrative]
    assert marked, "docs/architecture.md shows the illustrative marker on a block"
    assert all(block.info for block in marked), "an illustrative block still names its language"
    assert len(runnable("python")) >= 10 and len(runnable("bash")) >= 15


def test_the_readme_starts_with_the_two_set_up_commands_and_stays_short():
    readme = ROOT / "README.md"
    assert readme.stat().st_size < 10 * 1024, f"README.md is {readme.stat().st_size} bytes; the limit is 10 KB"
    first = [block.code.strip() for block in code_blocks(readme)[:2]]
    assert first == ["bash scripts/install.sh --demo", "bash scripts/install.sh --test"]


def test_the_readme_links_point_at_files_that_exist():
    text = (ROOT / "README.md").read_text()
    targets = [target.split("#")[0] for target in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in target]
    assert targets
    missing = [target for target in targets if target and not (ROOT / target).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


def test_the_site_builds_strictly(tmp_path):
    for module in ("mkdocs", "material", "mkdocstrings_handlers.python"):
        pytest.importorskip(module, reason="the docs extra is not installed: pip install -e '.[docs]'")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "site" / "api" / "pipeline" / "index.html").read_text().count("load_pipeline") > 1
