"""
The ROS 2 layer of trianflow_ros: the only package that imports rclpy and ``*_msgs``.

- :mod:`.vo_node`: the ``vo_node`` Node over :meth:`~trianflow_ros.vo.odometry.VisualOdometry.
  step` and its ``main``.
- :mod:`.conversions`: sensor_msgs/Image, CompressedImage, CameraInfo <-> numpy; poses and
  covariances -> Odometry, TransformStamped, PoseStamped; depth -> Image / PointCloud2.
- :mod:`.sync`: the Image + CameraInfo stamp synchroniser used when message_filters is absent.
- :mod:`.tf`: TF broadcasting (tf2_ros or a /tf, /tf_static fallback) and the base -> camera
  extrinsics.
- :mod:`.params`: parameter declarations, descriptors, validation and the mapping onto the
  shared configuration.
"""
