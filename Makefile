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

demo: setup
	@echo "make demo: the ROS 2 node and its demo are not yet available (issue 5)."
	@echo "What exists today: the geometric solver benchmark on real KITTI frames: make bench"

clean:
	rm -rf build install log .pytest_cache
