"""
The node's ROS parameters: declarations with descriptors, validation, and the shared config.

Order of precedence: the config's defaults, then ``config_file`` (a YAML file of the shared
configuration tree, e.g. ``config/kitti.yaml``), then ROS parameters (``--ros-args -p``,
``--params-file``, launch). The config fields ``vo.*``, ``geometry.*``, ``data.img_height``,
``data.img_width`` and ``flow_net.fb_*`` are ROS parameters with the same dotted names, whose
defaults are the values after ``config_file``; ``vo.device`` and ``vo.checkpoint`` are the
node parameters ``device`` and ``checkpoint``. With learned weights whose checkpoint stores a
configuration, the network-defined fields (input size, ``data.bgr``, network variant) come from
the checkpoint instead, unless ``data.img_height`` / ``data.img_width`` are given as ROS
parameters (:meth:`NodeParameters.explicit_config_keys`; see ``vo_node``).

Every parameter has a ParameterDescriptor with its description and, for numbers, a
FloatingPointRange / IntegerRange from the config's bounds. :func:`check_value` (used by the
node's on-set-parameters callback) rejects values outside the range or choices with a reason
that names the range. Parameters that cannot change while the node runs are read-only:
:data:`READ_ONLY_CONFIG`, and the node parameters marked ``read_only`` (subscriptions, QoS,
weights, device, extrinsics). The other config fields apply from the next frame without
resetting the trajectory.
"""

import copy
import math
from pathlib import Path
import re
from typing import Any, Dict, List, Optional, Sequence

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

from trianflow_ros.config import Config, ConfigError, field_specs, flatten, load_config
from trianflow_ros.config import set_value, validate
from trianflow_ros.ros.node_params import (check_frames, node_param_specs,  # noqa: F401
                                           ParamSpec, removed_given)

#: The config fields read once when the odometry is built: read-only parameters.
READ_ONLY_CONFIG = ('vo.flow_provider', 'vo.depth_provider', 'vo.dis_preset',
                    'vo.resolution', 'data.img_height', 'data.img_width', 'vo.net_backend',
                    'vo.net_cache_dir')
#: Parameters declared after the odometry is built (:meth:`NodeParameters.declare_deferred`).
DEFERRED = ('data.img_height', 'data.img_width')
#: Config fields that are node parameters under another name.
RENAMED_CONFIG = {'vo.device': 'device', 'vo.checkpoint': 'checkpoint'}
#: Provider values that follow the weights: 'net' with a checkpoint, else classical.
AUTO = 'auto'


def _mapped(name: str) -> bool:
    return ((name.startswith('vo.') or name.startswith('geometry.')
             or name in ('data.img_height', 'data.img_width')
             or name.startswith('flow_net.fb_')) and name not in RENAMED_CONFIG)


def config_param_specs(cfg: Config) -> List[ParamSpec]:
    """
    Return the parameters mapped onto the shared config, with ``cfg``'s values as defaults.

    ``vo.flow_provider`` / ``vo.depth_provider`` also accept 'auto' (their default unless the
    config file set them): 'net' when weights are resolved, else 'dis' / 'none'.
    """
    specs = []
    defaults = Config()
    default_values = {s.name: s.default for s in field_specs(defaults)}
    for s in field_specs(cfg):
        if not _mapped(s.name):
            continue
        default, choices = s.default, s.choices
        if s.name in ('vo.flow_provider', 'vo.depth_provider'):
            choices = (AUTO,) + tuple(choices)
            if default == default_values[s.name]:
                default = AUTO
        bounds = None
        if s.bounds is not None:
            cast = float if s.value_type is float else int
            bounds = (cast(s.bounds[0]), cast(s.bounds[1]))
        specs.append(ParamSpec(s.name, default, s.description, bounds, choices,
                               s.name in READ_ONLY_CONFIG, s.name))
    return specs


def describe(spec: ParamSpec) -> str:
    """Return the description text of a parameter (with its range and mutability)."""
    text = spec.description
    if spec.bounds is not None:
        text += f' [range {spec.bounds[0]} .. {spec.bounds[1]}]'
    if spec.choices is not None:
        text += ' {' + ', '.join(map(str, spec.choices)) + '}'
    text += ' (read-only: restart the node to change)' if spec.read_only else \
        ' (may change at run time; applies from the next frame)'
    return text


def descriptor(spec: ParamSpec) -> ParameterDescriptor:
    """Return the ParameterDescriptor of a parameter (description, range, read-only)."""
    d = ParameterDescriptor(name=spec.name, description=describe(spec),
                            read_only=spec.read_only)
    if spec.choices is not None:
        d.additional_constraints = 'one of: ' + ', '.join(map(str, spec.choices))
    if spec.bounds is not None:
        if spec.value_type is float:
            d.floating_point_range = [FloatingPointRange(
                from_value=float(spec.bounds[0]), to_value=float(spec.bounds[1]), step=0.0)]
        elif spec.value_type is int:
            d.integer_range = [IntegerRange(from_value=int(spec.bounds[0]),
                                            to_value=int(spec.bounds[1]), step=1)]
    return d


_DEVICE = re.compile(r'^(auto|cpu|cuda(:\d+)?)$')


def check_value(spec: ParamSpec, value: Any) -> Optional[str]:
    """
    Return why ``value`` is not allowed for ``spec`` (None when it is).

    The reason names the parameter, the value and the allowed range / choices.
    """
    t = spec.value_type
    if t is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if t is list:
        if not isinstance(value, (str, bytes)) and hasattr(value, '__iter__'):
            value = list(value)     # rclpy gives array.array for double arrays
        if not isinstance(value, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return f'{spec.name} must be a list of numbers, got {value!r}'
    elif type(value) is not t:
        return f'{spec.name} must be of type {t.__name__}, got {value!r}'
    if isinstance(value, float) and not math.isfinite(value):
        return f'{spec.name} must be finite, got {value!r}'
    if spec.bounds is not None and not (spec.bounds[0] <= value <= spec.bounds[1]):
        return (f'{spec.name} = {value!r} is out of range [{spec.bounds[0]}, '
                f'{spec.bounds[1]}]')
    if spec.choices is not None and value not in spec.choices:
        return f'{spec.name} = {value!r} is not one of {list(spec.choices)}'
    if spec.name == 'camera_matrix':
        return check_camera_matrix(value)
    if spec.name == 'base_to_camera':
        if len(value) != 6 or not all(math.isfinite(v) for v in value):
            return (f'base_to_camera must be 6 finite numbers [x, y, z, roll, pitch, yaw], '
                    f'got {list(value)}')
    if spec.name == 'device' and not _DEVICE.match(value):
        return f'device = {value!r} is not one of auto, cpu, cuda, cuda:N'
    if spec.name == 'twist_unknown_sigma':
        if len(value) != 2 or not all(math.isfinite(v) and v > 0 for v in value):
            return (f'twist_unknown_sigma must be 2 positive numbers [linear, angular], got '
                    f'{list(value)}')
    return None


def check_camera_matrix(value: Sequence[float]) -> Optional[str]:
    """Return why a camera_matrix value is invalid (None when valid or all zeros = unset)."""
    v = [float(x) for x in value]
    if len(v) != 9:
        return f'camera_matrix must have 9 numbers (row-major K), got {len(v)}'
    if not all(math.isfinite(x) for x in v):
        return f'camera_matrix must be finite, got {v}'
    if all(x == 0.0 for x in v):
        return None
    if v[0] <= 0 or v[4] <= 0 or v[8] != 1.0 or v[3] != 0 or v[6] != 0 or v[7] != 0:
        return (f'camera_matrix {v} is not a pinhole K [fx, 0, cx, 0, fy, cy, 0, 0, 1] with '
                'fx, fy > 0')
    return None


def camera_matrix_or_none(value: Sequence[float]):
    """Return K (3, 3) from a valid non-zero camera_matrix value, else None."""
    import numpy as np
    if check_camera_matrix(value) is not None or all(float(x) == 0.0 for x in value):
        return None
    return np.asarray([float(x) for x in value], dtype=np.float64).reshape(3, 3)


def config_dirs() -> List[Path]:
    """Return the package's config folders: the installed share, then the source tree."""
    dirs = []
    try:
        from ament_index_python.packages import get_package_share_directory
        dirs.append(Path(get_package_share_directory('trianflow_ros',
                                                     print_warning=False)) / 'config')
    except Exception:  # not installed / no ament index
        pass
    dirs.append(Path(__file__).resolve().parents[2] / 'config')
    return dirs


def resolve_config_file(value: str) -> Optional[Path]:
    """
    Return the path of a ``config_file`` value (None for '').

    An existing path is used as is; a relative name that does not exist (e.g. 'kitti.yaml') is
    looked up in the package's config folder. A missing file is returned unchanged, so that
    loading it raises the error that names it.
    """
    if not value:
        return None
    path = Path(value).expanduser()
    if path.is_file() or path.is_absolute():
        return path
    for folder in config_dirs():
        if (folder / value).is_file():
            return folder / value
    return path


class NodeParameters:
    """
    Declare every parameter on a node and keep their current values.

    :ivar specs: name -> ParamSpec.
    :ivar values: name -> current value.
    :ivar base_config: the config after ``config_file`` (before the ROS parameters).
    """

    def __init__(self, node):
        """
        Declare ``config_file``, load it, then declare the rest; check every value.

        :raises ConfigError: an unreadable config file or invalid values (all reasons).
        """
        self.node = node
        specs = node_param_specs()
        first = specs[0]
        node.declare_parameter(first.name, first.default, descriptor(first))
        path = resolve_config_file(node.get_parameter(first.name).value)
        self.base_config = load_config(path)
        self.config_path = path
        specs += config_param_specs(self.base_config)
        self.specs: Dict[str, ParamSpec] = {s.name: s for s in specs}
        overrides = self._overrides()
        self.values: Dict[str, Any] = {}
        for s in specs[1:]:
            if s.name in DEFERRED:      # declared by declare_deferred, with the size in use
                given = overrides.get(s.name)
                self.values[s.name] = s.default if given is None else given.value
            else:
                node.declare_parameter(s.name, s.default, descriptor(s))
        self.values.update({s.name: node.get_parameter(s.name).value for s in specs
                            if s.name not in DEFERRED})
        errors = [r for r in (check_value(self.specs[n], v) for n, v in self.values.items())
                  if r]
        errors += check_frames(self.values)
        if errors:
            raise ConfigError('invalid parameters: ' + '; '.join(errors))
        #: warnings for the node to log (removed parameters that are still given)
        self.notes = removed_given(overrides)

    def _overrides(self) -> Dict[str, Any]:
        return getattr(self.node, '_parameter_overrides', None) or {}

    def declare_deferred(self, cfg: Config) -> None:
        """
        Declare :data:`DEFERRED` (the input size) with the values of ``cfg``, the config in use.

        They are declared after the odometry is built, so that ``ros2 param get`` reads back
        the working size actually used (a checkpoint's stored size), not the config default.
        A value the user gave is kept (it is also the one in use).
        """
        flat = flatten(cfg)
        for name in DEFERRED:
            spec = self.specs[name]
            if not self.node.has_parameter(name):
                self.node.declare_parameter(name, flat[spec.config_key], descriptor(spec))
            self.values[name] = self.node.get_parameter(name).value

    def __getitem__(self, name: str) -> Any:
        """Return the current value of a parameter."""
        return self.values[name]

    def check(self, params) -> Optional[str]:
        """Return the reasons (joined) why a set of rclpy Parameters is rejected, or None."""
        reasons = []
        for p in params:
            spec = self.specs.get(p.name)
            if spec is None:
                continue
            if spec.read_only:
                reasons.append(f'{p.name} is read-only (restart the node to change it)')
                continue
            r = check_value(spec, p.value)
            if r:
                reasons.append(r)
        if not reasons:
            values = dict(self.values)
            values.update({p.name: p.value for p in params if p.name in self.specs})
            reasons = check_frames(values)
        return '; '.join(reasons) if reasons else None

    def explicit_config_keys(self) -> List[str]:
        """
        Return the config keys of the mapped parameters the user set explicitly.

        A parameter counts when a value was given for it (command line, parameter file,
        launch: the node's parameter overrides) or its value differs from its declared default
        (the value after ``config_file``).
        """
        overrides = self._overrides()
        return [s.config_key for name, s in self.specs.items()
                if s.config_key is not None
                and (name in overrides or self.values[name] != s.default)]

    def adopt(self, cfg: Config) -> None:
        """
        Take the values of the mapped parameters from ``cfg`` (the configuration in use).

        After the odometry adopted a checkpoint's input size, later parameter changes then
        start from that size instead of reverting it. The ROS parameters themselves keep the
        values they were declared with (read-only ones cannot be set).
        """
        flat = flatten(cfg)
        for name, spec in self.specs.items():
            if spec.config_key in flat and self.values[name] != AUTO:
                self.values[name] = flat[spec.config_key]

    def config(self, overrides: Optional[Dict[str, Any]] = None,
               base: Optional[Config] = None) -> Config:
        """
        Return the config with the mapped parameters applied (providers left as in ``base``).

        :param overrides: name -> value to use instead of the current values.
        :param base: the config to start from (default: the one after ``config_file``).
        :raises ConfigError: a value the config rejects.
        """
        cfg = copy.deepcopy(base if base is not None else self.base_config)
        values = dict(self.values)
        values.update(overrides or {})
        for name, spec in self.specs.items():
            if spec.config_key is None or values[name] == AUTO:
                continue
            set_value(cfg, spec.config_key, values[name])
        validate(cfg)
        return cfg
