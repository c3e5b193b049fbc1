"""trianflow_ros: monocular visual odometry, TF and scale-aligned depth (TrianFlow, CVPR 2020)."""

__version__ = '0.1.0'
