#!/usr/bin/env bash
# Creates the environment and runs the whole test suite (< 10 minutes on 2 cores).
source "$(dirname "$0")/setup_env.sh"
pytest -q tests "$@"
