#!/usr/bin/env python3
"""Writes hand-made seed inputs for the fuzz targets into corpus/<target>/.

The bytes follow the decoders in src/ (fs_target.rs, fuse_gen.rs,
pci_target.rs, cli_target.rs) choice by choice: they start the fuzzer off
with a working INIT, lookups, opens, reads, writes, DAX mappings, a full
virtio-pci driver handshake and a posted request. A decoder change makes
them mean something else, which is harmless (they are only seeds).
Usage: fuzz/seeds/gen_seeds.py [CORPUS_DIR]
"""
import os
import struct
import sys

OPCODE_INDEX = dict(LOOKUP=0, FORGET=2, GETATTR=3, SETATTR=4, READLINK=6, SYMLINK=7,
                    MKNOD=8, MKDIR=10, UNLINK=12, RMDIR=13, RENAME=14, RENAME2=15,
                    LINK=16, OPEN=17, READ=19, WRITE=21, STATFS=23, RELEASE=24,
                    FSYNC=25, SETXATTR=26, GETXATTR=27, LISTXATTR=28, REMOVEXATTR=29,
                    FLUSH=30, INIT=31, OPENDIR=32, READDIR=33, READDIRPLUS=34,
                    RELEASEDIR=36, CREATE=42, DESTROY=46, BATCH_FORGET=50,
                    FALLOCATE=51, LSEEK=52, SETUPMAPPING=54, REMOVEMAPPING=56)
NAMES = [b"file", b"file", b"a", b"b", b"dir"]


class Fs:
    """Mirrors fuse_gen::Known and the request layout."""

    def __init__(self, cfg):
        self.b = bytearray([cfg])
        self.nodes = 1
        self.fhs = 0

    def node(self, index):
        self.b.append(0)  # chance(230): a known node
        if self.nodes > 1:
            self.b.append(index)

    def fh(self, index=0):
        if self.fhs:
            self.b.append(0)  # chance(230): a known handle
            if self.fhs > 1:
                self.b.append(index)
        else:
            self.b.append(0)  # u64_from: 0

    def name(self, i):
        self.b += bytes([2, i, 0xff])  # dictionary word, NUL-terminated

    def start(self, op, node=0):
        self.b += bytes([0, 0, OPCODE_INDEX[op]])  # op_request, dictionary opcode
        self.node(node)
        self.b.append(0xff)  # structured body

    def end(self):
        self.b += bytes([2, 0xff, 11])  # no tail change, no header change, 8 KiB reply

    def open_flags(self, acc, bits=0):
        self.b += bytes([acc]) + struct.pack("<H", bits) + bytes([0xff])

    def lookup(self, i):
        self.start("LOOKUP")
        self.name(i)
        self.end()
        self.nodes += 1

    def create(self, i):
        self.start("CREATE")
        self.open_flags(2, 1)  # O_RDWR | O_CREAT
        self.b += bytes([0, 0]) + b"\0\0\0\0"  # mode, umask, open_flags
        self.name(i)
        self.end()
        self.nodes += 1
        self.fhs += 1

    def mkdir(self, i):
        self.start("MKDIR")
        self.b += bytes([1, 1])  # S_IFDIR|0755, umask 022
        self.name(i)
        self.end()
        self.nodes += 1

    def open(self, node, acc=2, directory=False):
        self.start("OPENDIR" if directory else "OPEN", node)
        self.open_flags(acc)
        self.b += b"\0\0\0\0"
        self.end()
        self.fhs += 1

    def rw(self, op, node, fh, data=b""):
        self.start(op, node)
        self.fh(fh)
        self.b += bytes([0, 3]) + b"\0" * 12 + bytes([0])  # offset 0, 4096 bytes
        if op == "WRITE":
            self.b += struct.pack("<H", len(data)) + data + bytes([0xff])
        self.end()

    def setupmapping(self, node, fh, flags_index=2):
        self.start("SETUPMAPPING", node)
        self.fh(fh)
        self.b += bytes([0, 0, flags_index, 0])  # foffset 0, len 4096, flags, moffset 0
        self.end()

    def removemapping(self, node):
        self.start("REMOVEMAPPING", node)
        self.b += bytes([1, 0xff, 0, 0])  # one range: moffset 0, len 4096
        self.end()

    def setxattr(self, node):
        self.start("SETXATTR", node)
        self.b += bytes([0]) + bytes([2, 0, 0xff]) + struct.pack("<H", 3) + b"abc" + bytes([0xff])
        self.end()


def fs_seeds():
    s = {}
    f = Fs(0)
    f.lookup(0)
    f.open(1)
    f.rw("READ", 1, 0)
    f.rw("WRITE", 1, 0, b"hello from the guest")
    s["lookup-open-read-write"] = f.b

    f = Fs(0)
    f.create(2)
    f.rw("WRITE", 1, 0, b"x" * 200)
    f.mkdir(4)
    f.open(0, 0, directory=True)
    f.rw("READDIRPLUS", 0, 1)
    f.setxattr(1)
    s["create-write-mkdir-readdirplus-xattr"] = f.b

    for cfg, name in [(0x02, "dax"), (0x0a, "dax-shown"), (0x03, "dax-readonly")]:
        f = Fs(cfg)
        f.lookup(0)
        f.open(1, 0 if cfg & 1 else 2)
        f.setupmapping(1, 0, 1 if cfg & 1 else 2)
        f.rw("READ", 1, 0)
        f.removemapping(1)
        s["setupmapping-" + name] = f.b

    f = Fs(0x01)
    f.lookup(0)
    f.open(1, 0)
    f.rw("READ", 1, 0)
    f.mkdir(4)
    s["readonly"] = f.b
    return s


STATUS = 0x14


def pci_seeds():
    s = {}

    def driver(queues_mask=0x03, qbase_choice=0):
        b = bytearray([8, 0xff, 0, 0, 1, 0, queues_mask])  # op_driver ... MSI-X on
        for _ in range(bin(queues_mask | 2).count("1")):
            b += bytes([2, qbase_choice, 2, 0, 1])  # size 16, base, layout, vector q, MSI-X
        b.append(0xff)  # DRIVER_OK
        return b

    def post(q, init):
        b = bytearray([10, q])
        if init:
            b += bytes([1]) + struct.pack("<I", 0x3fff_fffb)
        else:
            b += bytes([0, 0, 3, 0xff, 0, 0, 2, 0xff])  # GETATTR on the root
        b += bytes([2, 2, 0, 0, 0xff])  # RAM buffers, 8 KiB reply, head 0
        return b

    base = bytearray([0x01, 0, 0xff])  # two request queues, no failures
    s["handshake-post"] = base + driver() + post(1, True) + post(1, False) + bytes([14, 0])
    s["config-sizing"] = base + bytes(
        [0, 0, 1, 0, 0xff, 0, 1, 0xff, 0, 0, 1, 0, 0, 2, 0xff, 0, 0, 0, 0, 7, 0xff])
    s["msix-table"] = base + bytes([4, 0, 6, 0, 1, 12, 4, 0, 6, 1, 0, 7, 0xff, 7, 0, 7, 0])
    return s


def cli_seeds():
    return {
        "boot": b"\x00k\x00\x01tag=a,path=/tmp\x00\x05" + b"2\x00\x06" + b"64M",
        "run": b"\x02\x00\x04" + b"5s\x00\x07/tmp\x00\x03\x00ls\x00-l",
        "help": b"\x02\x00\x0c",
        "fs-options": b"\x00k\x00\x0f",
        "bad-size": b"\x00k\x00\x06" + b"99999999999T",
    }


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "corpus")
    for target, seeds in [("fs_request", fs_seeds()), ("pci_config", pci_seeds()), ("cli", cli_seeds())]:
        d = os.path.join(root, target)
        os.makedirs(d, exist_ok=True)
        for name, data in seeds.items():
            with open(os.path.join(d, "seed-" + name), "wb") as f:
                f.write(bytes(data))
        print(f"{target}: {len(seeds)} seeds in {d}")


if __name__ == "__main__":
    main()
