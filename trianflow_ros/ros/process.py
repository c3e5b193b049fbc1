"""Child processes of the ROS tools (nodes, players): stop them the way ROS 2 expects."""

import signal
import subprocess
from typing import Optional


def stop_process(proc: Optional[subprocess.Popen], timeout: float = 20.0) -> Optional[int]:
    """
    Stop a child process with SIGINT (a node's clean shutdown); kill it after ``timeout``.

    :param proc: the process, or None (nothing to stop).
    :param timeout: seconds to wait after SIGINT before SIGKILL.
    :return: its exit status, or None for ``proc=None``.
    """
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
