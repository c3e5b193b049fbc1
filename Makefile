# The two commands of the README. Both set the environment up first (idempotent, seconds when
# nothing changed).
.PHONY: setup test demo lint bench clean

setup:
	@scripts/setup_env.sh

test: setup
	@scripts/run_tests.sh

lint: setup
	@scripts/run_tests.sh test/test_lint.py

bench: setup
	@scripts/with_env.sh python bench/pose_solver.py

# The demo: renders the embedded synthetic sequence, plays it through the VO node over ROS 2
# (player -> vo_node -> recorder, DDS on localhost, own domain id) and writes results/demo/
# (trajectory, plot, depth, metrics.json). Its results are regenerated on every run
# (--overwrite); options: scripts/with_env.sh python -m trianflow_ros.ros.demo --help
demo: setup
	@scripts/with_env.sh python -m trianflow_ros.ros.demo --overwrite

clean:
	rm -rf build install log .pytest_cache
