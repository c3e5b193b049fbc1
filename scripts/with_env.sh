#!/usr/bin/env bash
# Run a command inside the project environment: the venv, the ament index, and the DDS settings
# every test and tool here uses (LOCALHOST discovery, fast discovery profile).
#   scripts/with_env.sh python bench/pose_solver.py
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
export VIRTUAL_ENV="$VENV"
export PATH="$VENV/bin:$PATH"
export AMENT_PREFIX_PATH="${AMENT_PREFIX_PATH:+$AMENT_PREFIX_PATH:}$VENV"
# Never let DDS leave the machine (the Kilted wheels ignore ROS_LOCALHOST_ONLY; set both).
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
export ROS_LOCALHOST_ONLY=1
export FASTDDS_DEFAULT_PROFILES_FILE="${FASTDDS_DEFAULT_PROFILES_FILE:-$ROOT/test/fastdds_fast_discovery.xml}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$@"
