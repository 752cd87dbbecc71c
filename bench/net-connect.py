#!/usr/bin/env python3
"""Connects to passt's UNIX socket and runs a command with the connected
descriptor, each `@FD@` in its arguments replaced by its number: QEMU then
takes it as `-netdev socket,fd=N` (the same length-prefixed stream), as
passt's own `qrap` wrapper does for QEMU without `-netdev stream` support.

    bench/net-connect.py SOCKET COMMAND [ARGS...]
"""
import os
import socket
import sys
import time


def main():
    path, argv = sys.argv[1], sys.argv[2:]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # passt may take seconds to start in a nested guest.
    deadline = time.monotonic() + 60
    while True:
        try:
            sock.connect(path)
            break
        except OSError as e:
            if time.monotonic() > deadline:
                sys.exit(f"net-connect: no passt at {path}: {e}")
            time.sleep(0.05)
    sock.set_inheritable(True)
    fd = str(sock.fileno())
    os.execvp(argv[0], [a.replace("@FD@", fd) for a in argv])


if __name__ == "__main__":
    main()
