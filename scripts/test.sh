#!/usr/bin/env bash
# Creates the environment and runs the whole test suite (8-12 minutes on 2 slow cores).
source "$(dirname "$0")/setup_env.sh"
ruff check .          # lint and import order (ruff.toml)
ruff format --check .  # one format (ruff.toml)
# Two workers, one per core (see docs/dependencies.md); a test file stays on
# one worker, so its module fixtures are built once. Files go out heaviest
# first (tests/conftest.py, FILE_SECONDS), not reordered by test count.
pytest -q -n 2 --dist loadfile --no-loadscope-reorder tests "$@"
