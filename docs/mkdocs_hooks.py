"""MkDocs hooks (mkdocs.yml ``hooks``).

- ``benchmarks/README.md`` and its figures become pages of the site: the benchmark report lives beside the
  benchmark scripts, where it is written and read in the repository; the site shows the same file as
  ``benchmarks/full.md`` (a second copy would drift), with ``benchmarks/results/*.png`` at the paths its image
  links expect.
- The docstrings name code with Sphinx roles (``:meth:`Pipeline.sample```), which Markdown renders as the role's
  text followed by code: the API pages show the code alone.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
SPHINX_ROLE = re.compile(r":(?:py:)?(?:attr|class|data|exc|func|meth|mod|obj):(?=<code>)")


def on_files(files: Files, config) -> Files:
    files.append(File.generated(config, "benchmarks/full.md", abs_src_path=str(BENCHMARKS / "README.md")))
    for figure in sorted((BENCHMARKS / "results").glob("*.png")):
        files.append(File.generated(config, f"benchmarks/results/{figure.name}", abs_src_path=str(figure)))
    return files


def on_page_content(html: str, page, config, files) -> str:
    return SPHINX_ROLE.sub("", html)
