#!/usr/bin/env python3
"""The host's side of bench/bench.sh's network workloads, on 127.0.0.1
(the guest reaches it at its gateway address, which passt maps to the
host's loopback):

    bench/net-server.py SINK_PORT SOURCE_PORT ECHO_PORT SOURCE_MIB

SINK_PORT reads until the client's FIN, then closes (ferry-bench tcpsend);
SOURCE_PORT sends SOURCE_MIB MiB, then closes (tcprecv); ECHO_PORT echoes
(tcprr). One thread per connection; it serves until killed.
"""
import socket
import sys
import threading


def sink(conn, _):
    while conn.recv(1 << 20):
        pass


def source(conn, mib):
    block = bytes(1 << 20)
    for _ in range(mib):
        conn.sendall(block)


def echo(conn, _):
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while data := conn.recv(4096):
        conn.sendall(data)


def serve(port, handler, arg):
    listener = socket.create_server(("127.0.0.1", port))

    def one(conn):
        with conn:
            handler(conn, arg)

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=one, args=(conn,), daemon=True).start()


def main():
    sink_port, source_port, echo_port, mib = map(int, sys.argv[1:5])
    for port, handler in ((sink_port, sink), (source_port, source)):
        threading.Thread(target=serve, args=(port, handler, mib), daemon=True).start()
    serve(echo_port, echo, None)


if __name__ == "__main__":
    main()
