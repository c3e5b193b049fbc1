"""Lint as ROS users run it: ament_flake8 (ament's flake8 config) and ament_pep257."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PATHS = [str(REPO / p) for p in ('trianflow_ros', 'test', 'bench', 'launch', 'setup.py')
         if (REPO / p).exists()]


@pytest.mark.linter
def test_flake8():
    from ament_flake8.main import main_with_errors
    rc, errors = main_with_errors(argv=PATHS)
    assert rc == 0, f'{len(errors)} flake8 error(s):\n' + '\n'.join(errors)


@pytest.mark.linter
def test_pep257():
    from ament_pep257.main import main
    rc = main(argv=PATHS)
    assert rc == 0, 'pep257 errors (printed above)'
