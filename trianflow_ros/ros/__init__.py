"""
The ROS 2 layer of trianflow_ros: the only package that imports rclpy and ``*_msgs``.

- :mod:`.vo_node`: the ``vo_node`` Node over :meth:`~trianflow_ros.vo.odometry.VisualOdometry.
  step` and its ``main``.
- :mod:`.conversions`: sensor_msgs/Image, CompressedImage, CameraInfo <-> numpy; poses and
  covariances -> Odometry, TransformStamped, PoseStamped; depth -> Image / PointCloud2.
- :mod:`.pairing`: images with their camera_info (same stamp, else the newest fresh one, else
  ``camera_matrix``).
- :mod:`.tf`, :mod:`.tf_tree`: TF broadcasting (tf2_ros or a /tf, /tf_static fallback), the
  odometry transform policy and the base -> camera extrinsics (tf2_ros or an own TF tree).
- :mod:`.odometry_output`, :mod:`.depth_output`, :mod:`.path_keeper`: what the node publishes
  (pose, twist and covariances; depth at the camera's size; the bounded path).
- :mod:`.params`, :mod:`.node_params`: parameter declarations, descriptors, validation and the
  mapping onto the shared configuration.
- :mod:`.node_inputs`, :mod:`.frame_queue`, :mod:`.frame_publisher`, :mod:`.param_updates`,
  :mod:`.node_main`: the node's parts (subscriptions and conversion; newest-frame buffer,
  worker and services; publishing one frame; run-time parameter changes; the process).
  Which weights it runs: :mod:`trianflow_ros.vo.factory`. :mod:`.node_stats`: frame accounting;
  :mod:`.throttle`: log throttling per kind and message shape.
"""
