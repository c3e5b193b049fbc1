"""
The cache of exported ONNX models of the networks: ``python -m trianflow_ros.vo.onnx_cache``.

Lists the models in the cache folder (:func:`trianflow_ros.vo.backends.onnx_cache_dir`) with
their size and source checkpoint; ``--clear`` deletes them (``--dir`` names another folder, as
``vo.net_cache_dir`` does).
"""

import argparse
import json

from trianflow_ros.vo.backends import CACHE_ENV, onnx_cache_dir


def main(argv=None) -> int:
    """List the cached ONNX models (and delete them with ``--clear``); return 0."""
    parser = argparse.ArgumentParser(
        prog='python -m trianflow_ros.vo.onnx_cache',
        description='Show or clear the cache of exported ONNX models of the networks.')
    parser.add_argument('--dir', default='', help='cache folder (default: '
                        f'${CACHE_ENV}, $XDG_CACHE_HOME/trianflow_ros or ~/.cache/trianflow_ros)')
    parser.add_argument('--clear', action='store_true', help='delete the cached models')
    args = parser.parse_args(argv)
    folder = onnx_cache_dir(args.dir)
    files = sorted(folder.glob('*.onnx')) if folder.is_dir() else []
    print(f'{folder}: {len(files)} model(s), '
          f'{sum(f.stat().st_size for f in files) / 2**20:.1f} MiB')
    for f in files:
        note = f.with_suffix('.json')
        try:
            source = json.loads(note.read_text()).get('source', '')
        except (OSError, ValueError, AttributeError):
            source = ''
        print(f'  {f.name}  {f.stat().st_size / 2**20:.1f} MiB  {source}')
        if args.clear:
            f.unlink()
            note.unlink(missing_ok=True)
    if args.clear:
        print(f'deleted {len(files)} model(s)')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
