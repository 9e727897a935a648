#!/usr/bin/env bash
# CI: the repo's lint configuration, checked (never applied): ruff (lint + format, pyproject.toml),
# clang-format (.clang-format) on cpp/, mypy --strict on the package (pyproject.toml). The tools
# are pinned, so that a new release never changes what "formatted" means under our feet.
# Apply the same formatting with: ruff check --fix . && ruff format . && clang-format -i $(git ls-files 'cpp/*')
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q "ruff==0.17.6" "clang-format==23.1.5" mypy
echo "== ruff check";        ruff check .
echo "== ruff format";       ruff format --check .
echo "== clang-format";      clang-format --dry-run -Werror $(git ls-files 'cpp/*.cpp' 'cpp/*.hpp' 'cpp/*.inl')
echo "== mypy --strict";     mypy
