#!/usr/bin/env python3
"""Small helpers for the tests/e2e shell scripts (standard library only).

  e2e_tool.py depmod MODDIR               write MODDIR/modules.dep from the modules' .modinfo
  e2e_tool.py closure MODDIR NAME...      print module paths (relative to MODDIR), load order
  e2e_tool.py unpack-module SRC DST       copy a .ko / .ko.xz / .ko.gz / .ko.zst decompressed to DST
  e2e_tool.py extract-vmlinux BZIMAGE OUT unpack the ELF vmlinux from a bzImage (zstd, xz, gzip)
  e2e_tool.py check-static FILE...        fail unless each FILE is an x86-64 ELF without an
                                          interpreter (statically linked) or a #!/bin/sh script
  e2e_tool.py wait-line FILE REGEX SECS [NTH [PID]]
                                          wait until FILE has NTH (default 1) lines matching REGEX
                                          (anywhere in the line, \r dropped) and print the NTH;
                                          exit 1 after SECS seconds, 3 as soon as process PID is
                                          gone without the line having appeared

The host may have no kmod (depmod), so modules.dep is generated here, in the format kmod and
busybox's modprobe read: "path: dep dep ...", all dependencies listed, last one loaded first.
"""

import ctypes
import ctypes.util
import gzip
import lzma
import os
import struct
import sys
import zlib
from concurrent.futures import ProcessPoolExecutor

MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def die(msg):
    print(f"e2e_tool: error: {msg}", file=sys.stderr)
    sys.exit(1)


def libzstd():
    """libzstd through ctypes: every Debian has it (dpkg depends on it); Python 3.11 has no zstd."""
    name = ctypes.util.find_library("zstd") or "libzstd.so.1"
    try:
        z = ctypes.CDLL(name)
    except OSError:
        die(f"cannot load {name} to decompress zstd (install libzstd1)")
    z.ZSTD_isError.argtypes = [ctypes.c_size_t]
    z.ZSTD_findFrameCompressedSize.restype = ctypes.c_size_t
    z.ZSTD_findFrameCompressedSize.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    z.ZSTD_getFrameContentSize.restype = ctypes.c_ulonglong
    z.ZSTD_getFrameContentSize.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    z.ZSTD_decompress.restype = ctypes.c_size_t
    z.ZSTD_decompress.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
    return z


def zstd_frame_len(data):
    """Length of the zstd frame at the start of data (trailing bytes allowed)."""
    z = libzstd()
    n = z.ZSTD_findFrameCompressedSize(data, len(data))
    if z.ZSTD_isError(n):
        die("corrupt zstd frame")
    return n


def zstd_decompress(frame, capacity=None):
    """Decompress one complete zstd frame; capacity is needed if the frame has no content size."""
    z = libzstd()
    if capacity is None:
        capacity = z.ZSTD_getFrameContentSize(frame, len(frame))
        if capacity >= 2**63:  # unknown or error
            die("zstd frame without content size")
    buf = ctypes.create_string_buffer(capacity)
    r = z.ZSTD_decompress(buf, capacity, frame, len(frame))
    if z.ZSTD_isError(r):
        die("zstd decompression failed")
    return buf.raw[:r]


def read_module(path):
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".ko.xz"):
        return lzma.decompress(data, format=lzma.FORMAT_XZ)
    if path.endswith(".ko.gz"):
        return gzip.decompress(data)
    if path.endswith(".ko.zst"):
        return zstd_decompress(data[: zstd_frame_len(data)])
    if path.endswith(".ko"):
        return data
    die(f"unsupported module compression: {path}")


def modinfo(path):
    """Return the key=value strings of the ELF .modinfo section of a module file."""
    elf = read_module(path)
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        die(f"{path}: not a little-endian ELF64 module")
    e_shoff, = struct.unpack_from("<Q", elf, 0x28)
    e_shentsize, e_shnum, e_shstrndx = struct.unpack_from("<HHH", elf, 0x3A)

    def section(i):
        # name, type, flags, addr, offset, size
        return struct.unpack_from("<IIQQQQ", elf, e_shoff + i * e_shentsize)

    _, _, _, _, str_off, str_size = section(e_shstrndx)
    names = elf[str_off : str_off + str_size]
    for i in range(e_shnum):
        name_off, _, _, _, off, size = section(i)
        end = names.index(b"\0", name_off)
        if names[name_off:end] == b".modinfo":
            raw = elf[off : off + size]
            return [s.decode("utf-8", "replace") for s in raw.split(b"\0") if s]
    return []


def module_name(relpath):
    base = os.path.basename(relpath)
    for suffix in MODULE_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def list_modules(moddir):
    out = []
    for root, _, files in os.walk(os.path.join(moddir, "kernel")):
        for f in files:
            if f.endswith(MODULE_SUFFIXES):
                out.append(os.path.relpath(os.path.join(root, f), moddir))
    out.sort()
    return out


def depends_of(args):
    moddir, rel = args
    for kv in modinfo(os.path.join(moddir, rel)):
        if kv.startswith("depends="):
            return rel, [d.replace("-", "_") for d in kv[len("depends=") :].split(",") if d]
    return rel, []


def cmd_depmod(moddir):
    mods = list_modules(moddir)
    if not mods:
        die(f"no modules under {moddir}/kernel")
    by_name = {module_name(m): m for m in mods}
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        direct = dict(pool.map(depends_of, [(moddir, m) for m in mods], chunksize=64))

    def load_order(rel, seen, order, stack):
        if rel in seen:
            return
        if rel in stack:
            die(f"dependency cycle at {rel}")
        stack.add(rel)
        for dep in direct[rel]:
            if dep not in by_name:
                die(f"{rel} depends on unknown module {dep}")
            load_order(by_name[dep], seen, order, stack)
        stack.discard(rel)
        seen.add(rel)
        order.append(rel)

    tmp = os.path.join(moddir, "modules.dep.tmp")
    with open(tmp, "w") as f:
        for m in mods:
            order = []
            load_order(m, set(), order, set())
            deps = [d for d in reversed(order) if d != m]  # last listed is loaded first
            f.write(f"{m}: {' '.join(deps)}\n".replace(": \n", ":\n"))
    os.replace(tmp, os.path.join(moddir, "modules.dep"))
    print(f"{len(mods)} modules")


def read_dep(moddir):
    path = os.path.join(moddir, "modules.dep")
    if not os.path.exists(path):
        die(f"{path} missing (prepare.sh writes it)")
    deps = {}
    with open(path) as f:
        for line in f:
            mod, _, rest = line.partition(":")
            deps[mod.strip()] = rest.split()
    return deps


def cmd_closure(moddir, names):
    deps = read_dep(moddir)
    by_name = {module_name(m): m for m in deps}
    order = []
    for name in names:
        key = name.replace("-", "_")
        if key not in by_name:
            die(f"module {name} not found in {moddir}/modules.dep")
        mod = by_name[key]
        for m in list(reversed(deps[mod])) + [mod]:
            if m not in order:
                order.append(m)
    print("\n".join(order))


def cmd_unpack_module(src, dst):
    data = read_module(src)
    tmp = dst + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, dst)


def cmd_extract_vmlinux(src, dst):
    with open(src, "rb") as f:
        data = f.read()
    # The payload's method is the kernel's CONFIG_KERNEL_*; the kernel build appends the
    # uncompressed size (u32 LE) right after the compressed stream.
    out = None
    i = data.find(ZSTD_MAGIC)
    if i >= 0:
        n = zstd_frame_len(data[i:])
        (size,) = struct.unpack_from("<I", data, i + n)
        out = zstd_decompress(data[i : i + n], capacity=size)
    if out is None:
        i = data.find(b"\xfd7zXZ\x00")
        if i >= 0:
            out = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[i:])
    if out is None:
        i = data.find(b"\x1f\x8b\x08\x00")
        if i >= 0:
            out = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data[i:])
    if not out or out[:4] != b"\x7fELF":
        die(f"{src}: no zstd-, xz- or gzip-compressed ELF kernel inside")
    tmp = dst + ".tmp"
    with open(tmp, "wb") as f:
        f.write(out)
    os.replace(tmp, dst)


def cmd_check_static(files):
    bad = []
    for path in files:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
        if data.startswith(b"#!/bin/sh") or data.startswith(b"#!/bin/busybox"):
            continue
        if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
            bad.append(f"{path}: not an ELF64 little-endian file or #!/bin/sh script")
            continue
        (e_machine,) = struct.unpack_from("<H", data, 0x12)
        if e_machine != 62:
            bad.append(f"{path}: not x86-64 (e_machine {e_machine})")
            continue
        (e_phoff,) = struct.unpack_from("<Q", data, 0x20)
        e_phentsize, e_phnum = struct.unpack_from("<HH", data, 0x36)
        for i in range(e_phnum):
            (p_type,) = struct.unpack_from("<I", data, e_phoff + i * e_phentsize)
            if p_type == 3:  # PT_INTERP
                bad.append(f"{path}: dynamically linked (has an interpreter); build with "
                           "RUSTFLAGS='-C target-feature=+crt-static' --target x86_64-unknown-linux-gnu")
                break
    for b in bad:
        print(f"e2e_tool: error: {b}", file=sys.stderr)
    sys.exit(1 if bad else 0)


def cmd_wait_line(path, regex, secs, nth=1, pid=None):
    """Follows a growing log file (a guest's serial console, the broker's log) for a line."""
    import re
    import time

    pattern = re.compile(regex)
    deadline = time.monotonic() + float(secs)
    seen = 0
    offset = 0
    partial = b""
    while True:
        alive = pid is None or os.path.exists(f"/proc/{pid}")
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
        except FileNotFoundError:
            chunk = b""
        offset += len(chunk)
        lines = (partial + chunk).split(b"\n")
        partial = lines.pop()
        for raw in lines:
            line = raw.decode("utf-8", "replace").replace("\r", "")
            if pattern.search(line):
                seen += 1
                if seen == nth:
                    print(line)
                    return 0
        if not alive:
            print(f"e2e_tool: process {pid} ended before line {nth} matching {regex!r} appeared in {path}", file=sys.stderr)
            sys.exit(3)
        if time.monotonic() > deadline:
            print(f"e2e_tool: no line {nth} matching {regex!r} in {path} after {secs} s", file=sys.stderr)
            sys.exit(1)
        # A log file offers no change notification in the standard library: re-read it often.
        time.sleep(0.05)


def main(argv):
    if len(argv) in (4, 5, 6) and argv[0] == "wait-line":
        nth = int(argv[4]) if len(argv) >= 5 else 1
        pid = argv[5] if len(argv) == 6 else None
        return cmd_wait_line(argv[1], argv[2], argv[3], nth, pid)
    if len(argv) >= 2 and argv[0] == "depmod" and len(argv) == 2:
        return cmd_depmod(argv[1])
    if len(argv) >= 3 and argv[0] == "closure":
        return cmd_closure(argv[1], argv[2:])
    if len(argv) == 3 and argv[0] == "unpack-module":
        return cmd_unpack_module(argv[1], argv[2])
    if len(argv) >= 2 and argv[0] == "check-static":
        return cmd_check_static(argv[1:])
    if len(argv) == 3 and argv[0] == "extract-vmlinux":
        return cmd_extract_vmlinux(argv[1], argv[2])
    print(__doc__, file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main(sys.argv[1:])
