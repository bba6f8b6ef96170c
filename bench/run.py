"""Run every benchmark in this folder, one after the other, each in its own process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

SCRIPTS = [
    "core_bench.py",
    "webchat_bench.py",
    "webhook_bench.py",
    "redis_bench.py",
    "email_bench.py",
]

if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("only", nargs="*", help="run only these (e.g. webhook_bench.py)")
    args = parser.parse_args()
    for script in args.only or SCRIPTS:
        if script not in SCRIPTS:
            parser.error(f"no benchmark {script!r}; known: {', '.join(SCRIPTS)}")
        path = HERE / script
        if not path.exists():
            continue
        print(f"== {script}", flush=True)
        subprocess.run([sys.executable, str(path)], check=False)
