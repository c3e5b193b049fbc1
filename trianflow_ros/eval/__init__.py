"""
Evaluation: KITTI / NYUv2 depth metrics, KITTI 2015 flow metrics, KITTI PNG codecs, CLI.

Numpy only (no torch, no ROS). ``trianflow-eval depth|flow`` (:mod:`.cli`) scores saved
predictions; the odometry metrics are a separate module (to come).
"""
