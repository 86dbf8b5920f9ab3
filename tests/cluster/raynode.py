"""``ray start`` for a worker node of the loopback test cluster:
``python -m tests.cluster.raynode start --address 127.0.0.1:PORT --node-ip-address 127.0.0.1 ...``

Ray's command line (2.60) cannot start a worker node on 127.0.0.1 on Linux: it replaces a
loopback ``--node-ip-address`` and the loopback host of ``--address`` with the machine's
reachable address (``ray._private.services.resolve_ip_for_localhost``), and in the
single-machine mode that keeps loopback addresses (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``,
which the head node runs in) it refuses to start worker nodes at all. This runs the same
command with that replacement switched off, and nothing else changed, so every server of the
node listens on the loopback address it was given. On a real cluster, whose nodes have
reachable addresses, the plain ``ray start`` of the README does the same.
"""

from __future__ import annotations

import sys

from ray._private import services
from ray.scripts.scripts import main


def _keep(host: str) -> str:
    return host


if __name__ == "__main__":
    services.resolve_ip_for_localhost = _keep
    sys.exit(main())
