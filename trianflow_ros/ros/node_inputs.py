"""
What the node reads: the image and camera_info subscriptions, and one image as VO input.

:func:`create_inputs` subscribes (QoS of ``image_qos`` / ``queue_size``, ``use_compressed``)
and pairs images with camera_infos (:mod:`~trianflow_ros.ros.pairing`; ``message_filters``'
Cache where importable, else an own cache of the same size). :class:`FrameConverter` turns an
Image / CompressedImage and its CameraInfo (or ``camera_matrix``) into the ``(rgb, K,
distortion)`` of ``VisualOdometry.step``, or raises :class:`FrameRejected` with the reason
counted in the diagnostics.
"""

import types
from typing import Callable, Optional, Tuple

import numpy as np
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from trianflow_ros.geometry.distortion import Distortion
from trianflow_ros.ros import conversions as conv
from trianflow_ros.ros.camera_distortion import DistortionTracker
from trianflow_ros.ros.pairing import (FramePairer, INFO_CACHE_SIZE, InfoCache,
                                       MessageFiltersInfoCache)
from trianflow_ros.ros.params import camera_matrix_or_none


class FrameRejected(Exception):
    """A frame that cannot be used: ``reason`` (diagnostics), ``key`` (throttle), the text."""

    def __init__(self, reason: str, key: str, text: str):
        """Keep the reason counted, the throttle key and the message."""
        super().__init__(text)
        self.reason, self.key, self.text = reason, key, text


def qos_warning(image_qos: str, image_topic: str, info_topic: str, event) -> str:
    """Return the warning about a publisher whose QoS is incompatible with ``image_qos``."""
    other = 'sensor_data' if image_qos == 'reliable' else 'reliable'
    return (f'a publisher on {image_topic} / {info_topic} offers a QoS incompatible with this '
            f"node's image_qos={image_qos} (policy {getattr(event, 'last_policy_kind', '?')}): "
            f'its messages never arrive. Fix: restart with image_qos:={other}, or make the '
            'camera publish reliable')


def create_inputs(node, message_filters, group, on_image: Callable, on_info: Callable,
                  on_incompatible_qos: Callable, on_paired: Callable,
                  on_unpaired: Callable) -> types.SimpleNamespace:
    """
    Subscribe to the images and camera_infos of a node and create their pairer.

    :param node: the node (its ``params`` and ``info`` dict; ``info['pairing']`` is set).
    :param message_filters: the ``message_filters`` module, or None (own cache).
    :param group: the callback group of the subscriptions.
    :return: ``image_topic``, ``info_topic``, ``pairer`` (:class:`FramePairer`) and
        ``mf_info`` (the message_filters Subscriber or None).
    """
    p = node.params
    depth = p['queue_size']
    reliability = (ReliabilityPolicy.BEST_EFFORT if p['image_qos'] == 'sensor_data'
                   else ReliabilityPolicy.RELIABLE)
    qos = QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST, reliability=reliability,
                     durability=DurabilityPolicy.VOLATILE)
    info_qos = QoSProfile(depth=max(depth, INFO_CACHE_SIZE), history=HistoryPolicy.KEEP_LAST,
                          reliability=reliability, durability=DurabilityPolicy.VOLATILE)
    events = SubscriptionEventCallbacks(incompatible_qos=on_incompatible_qos)
    if p['use_compressed']:
        try:
            image_topic = node.resolve_topic_name('image') + '/compressed'
        except Exception:
            image_topic = 'image/compressed'
        image_type = CompressedImage
    else:
        image_topic, image_type = 'image', Image
    out = types.SimpleNamespace(image_topic=image_topic, info_topic='camera_info', mf_info=None)
    if message_filters is not None:
        node.info['pairing'] = f'message_filters.Cache({INFO_CACHE_SIZE})'
        out.mf_info = message_filters.Subscriber(
            node, CameraInfo, out.info_topic, qos_profile=info_qos, callback_group=group)
        infos = MessageFiltersInfoCache(message_filters, out.mf_info, INFO_CACHE_SIZE)
        infos.cache.registerCallback(on_info)
    else:
        node.info['pairing'] = f'own InfoCache({INFO_CACHE_SIZE})'
        infos = InfoCache(INFO_CACHE_SIZE)
        node.create_subscription(CameraInfo, out.info_topic, on_info, info_qos,
                                 callback_group=group, event_callbacks=events)
    out.pairer = FramePairer(
        on_paired, on_unpaired, wait=p['camera_info_wait'],
        first_wait=p['camera_info_timeout'], max_age=p['camera_info_max_age'],
        infos=infos, max_held=depth,
        matrix_available=lambda: camera_matrix_or_none(p['camera_matrix']) is not None)
    node.create_subscription(image_type, image_topic, on_image, qos,
                             callback_group=group, event_callbacks=events)
    return out


class FrameConverter:
    """Images and camera_infos -> ``(rgb, K, distortion)`` (see the module docstring)."""

    def __init__(self, log: Callable[[str], None], warn: Callable[[str, str], None]):
        """
        Create the converter.

        :param log: where a change of the distortion in use is told (info).
        :param warn: ``warn(key, text)``: a throttled warning (an unsupported distortion).
        """
        self.distortion = DistortionTracker()
        self._log, self._warn = log, warn

    def convert(self, image, source) -> Tuple[np.ndarray, np.ndarray, Optional[Distortion]]:
        """
        Return the RGB image, its K and its distortion (None: pinhole).

        :param image: sensor_msgs/Image or CompressedImage.
        :param source: its CameraInfo, or a 3x3 K (``camera_matrix``).
        :raises FrameRejected: an unsupported encoding, a malformed image, a camera_info that
            does not fit the image or is invalid.
        """
        try:
            if isinstance(image, CompressedImage):
                rgb = conv.compressed_to_rgb8(image)
            else:
                rgb = conv.image_to_rgb8(image)
        except conv.UnsupportedEncodingError as e:
            raise FrameRejected('encoding', 'encoding', f'frame dropped: {e}') from e
        except ValueError as e:
            raise FrameRejected('malformed', 'malformed', f'frame dropped: {e}') from e
        distortion = None
        try:
            if isinstance(source, CameraInfo):
                K = conv.camera_info_to_K(source)
                K = conv.fit_K_to_image(K, conv.camera_info_size(source), rgb.shape[:2])
                distortion = self._distortion_of(source)
            else:
                K = np.asarray(source, dtype=np.float64)
        except conv.ImageSizeError as e:
            raise FrameRejected('size', 'size', f'frame dropped: {e}') from e
        except ValueError as e:
            raise FrameRejected('camera_info', 'camera_info', f'frame dropped: {e}') from e
        return rgb, K, distortion

    def _distortion_of(self, info: CameraInfo) -> Optional[Distortion]:
        """Return the Distortion of a camera_info (None: pinhole); say what is used."""
        dist, changed, problem = self.distortion.update(info.distortion_model, info.d)
        if changed and not problem:
            self._log(f'camera_info distortion: {self.distortion.used}')
        if problem:
            self._warn('distortion', problem)
        return dist
