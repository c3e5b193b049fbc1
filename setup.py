"""ament_python package definition of trianflow_ros."""

from glob import glob

from setuptools import find_packages, setup

package_name = 'trianflow_ros'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(include=[package_name, package_name + '.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*.launch.py')),
        ('share/' + package_name + '/config', glob('config/*.yaml') + glob('config/*.rviz')),
        ('share/' + package_name + '/models', glob('models/*.pth') + glob('models/*.md')),
    ],
    install_requires=['setuptools', 'numpy', 'opencv-python-headless<5', 'PyYAML', 'torch'],
    extras_require={'test': ['pytest'], 'onnx': ['onnxruntime', 'onnxscript']},
    zip_safe=True,
    maintainer='trianflow_ros maintainers',
    maintainer_email='maintainers@trianflow-ros.org',
    description='Monocular VO, TF and scale-aligned depth with TrianFlow (CVPR 2020) for ROS 2',
    license='MIT',
    entry_points={
        'console_scripts': [
            'trianflow-config = trianflow_ros.config:main',
            'trianflow-eval = trianflow_ros.eval.cli:main',
            'trianflow-vo = trianflow_ros.vo.cli:main',
            'trianflow-train = trianflow_ros.train.cli:main',
            'vo_node = trianflow_ros.ros.vo_node:main',
            'trianflow-bag = trianflow_ros.ros.bag:main',
            'trianflow-play = trianflow_ros.ros.player:main',
            'trianflow-record = trianflow_ros.ros.recorder:main',
            'trianflow-demo = trianflow_ros.ros.demo:main',
        ],
    },
)
