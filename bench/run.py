"""Run every benchmark in this folder, one after the other, each in its own process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    scripts = [
        "core_bench.py",
        "webchat_bench.py",
        "webhook_bench.py",
        "redis_bench.py",
        "email_bench.py",
    ]
    for script in scripts:
        path = HERE / script
        if not path.exists():
            continue
        print(f"== {script}", flush=True)
        subprocess.run([sys.executable, str(path)], check=False)
