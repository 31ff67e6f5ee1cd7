"""Write man/kvm_stat.1 from kvm_stat's argument parser.

Run from the repository root after changing an option or a man page text:
    python tools/manpage.py
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from kvmstat.manpage import render  # noqa: E402

if __name__ == "__main__":
    target = os.path.join(ROOT, "man", "kvm_stat.1")
    with open(target, "w") as f:
        f.write(render())
    print(f"wrote {os.path.relpath(target, ROOT)}")
