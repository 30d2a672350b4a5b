"""Stopping the processes tests start (servers, receivers), politely and then firmly."""

from __future__ import annotations

import signal
import subprocess


def stop_process(process: subprocess.Popen[bytes], *, timeout: float = 15.0, sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
