"""
Evaluation: depth (KITTI / NYUv2), flow (KITTI 2015) and odometry (KITTI, ATE/RPE) metrics.

Numpy only (no torch, no ROS). ``trianflow-eval depth|flow|odometry`` (:mod:`.cli`) scores saved
predictions and trajectories.
"""
