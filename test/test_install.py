"""
The package is installed into the environment: every console script of setup.py answers --help.

``scripts/setup_env.sh`` (run by ``make test`` and ``make demo``) installs the package editable
into the venv, so the commands the README shows (``scripts/with_env.sh trianflow-config``,
``trianflow-vo``, ``trianflow-eval``, ``vo_node``, ...) are found on a fresh clone. The test runs
each script from the venv's bin folder (the interpreter's), not through ``python -m``.
"""

import ast
import os
from pathlib import Path
import subprocess
import sys

import pytest

REPO = Path(__file__).resolve().parents[1]


def console_scripts():
    """Return {name: 'module:function'} of the console scripts in setup.py (parsed, not run)."""
    tree = ast.parse((REPO / 'setup.py').read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == 'console_scripts':
                    entries = ast.literal_eval(value)
                    return dict(tuple(part.strip() for part in e.split('=', 1))
                                for e in entries)
    raise AssertionError('setup.py has no console_scripts')


def test_setup_declares_the_readme_commands():
    scripts = console_scripts()
    assert {'trianflow-config', 'trianflow-vo', 'trianflow-eval', 'trianflow-train', 'vo_node',
            'trianflow-bag', 'trianflow-play', 'trianflow-record'} <= set(scripts)


@pytest.mark.parametrize('name', sorted(console_scripts()))
def test_console_script_is_installed_and_answers_help(name):
    exe = Path(sys.executable).parent / name
    assert exe.is_file(), (f'{name} is not installed in {exe.parent}: run scripts/setup_env.sh '
                           '(make test / make demo do), which installs the package editable')
    env = dict(os.environ)
    env.pop('PYTHONPATH', None)          # the installed package, not the checkout on the path
    out = subprocess.run([str(exe), '--help'], capture_output=True, text=True, timeout=120,
                         env=env, cwd='/')
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert out.stdout.lstrip().startswith('usage:'), out.stdout[:500]
    assert 'visual odometry ready' not in out.stdout + out.stderr     # vo_node did not start
