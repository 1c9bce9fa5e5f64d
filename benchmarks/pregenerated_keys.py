"""``python -m rotator`` with its RSA key pairs generated before it starts.

For the scale benchmark's "rotator CPU per rotation without key generation":
``BENCH_KEYS`` key pairs are made first, then ``rsa.generate_private_key``
hands them out and the CLI runs as usual; the CPU it used from then on is
written to stderr as ``cpu-after-keygen <seconds>``.  A measurement aid, not a
way to run the rotator (the pairs are made in this process, as they would be).
"""

from __future__ import annotations

import os
import runpy
import sys
import time
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa


def main() -> None:
    pool = [rsa.generate_private_key(65537, 2048) for _ in range(int(os.environ["BENCH_KEYS"]))]

    def pregenerated(*_args: Any, **_kwargs: Any) -> rsa.RSAPrivateKey:
        return pool.pop()

    rsa.generate_private_key = pregenerated
    sys.argv = ["rotator", *sys.argv[1:]]
    started = time.process_time()
    try:
        runpy.run_module("rotator", run_name="__main__")
    finally:
        sys.stderr.write(f"cpu-after-keygen {time.process_time() - started:.4f}\n")


if __name__ == "__main__":
    main()
