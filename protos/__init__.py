"""The contract between services: ``nas.v1`` messages, their Python mirrors and codecs.

Importing this package (every service does, before gRPC) turns off gRPC's fork handlers unless
the environment says otherwise. Our processes fork only to exec another program (child
services, Ray's processes), and with the handlers on, gRPC's poller thread restarted in the
forked child can hit the descriptors ``subprocess`` closes before ``exec`` and abort the child
(EBADF in epoll_wait; grpc/grpc#43055). CI saw a replica process die that way at start.
"""

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
