"""What the kernel says moved: this process's /proc/self/io and a block device's /proc/diskstats.

A benchmark counts the bytes its calls returned; the kernel counts the bytes that reached or left
the device. The difference is the page cache. /proc/self/io (all threads of the process):
`read_bytes` are bytes this process caused to be read from a block device (buffered misses,
readahead and O_DIRECT alike), `write_bytes` bytes it dirtied or wrote direct (not proof they
reached the device), `cancelled_write_bytes` dirty bytes it dropped before writeback (a file
truncated or deleted). /proc/diskstats: sectors (always 512 bytes) the device completed, for
every process on the host, writeback included.

Every reader here returns None with a reason rather than raising: a host without /proc (or a
container that hides it) runs the benchmark; its summary then says the number is unknown.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

PROC_IO = "/proc/self/io"
DISKSTATS = "/proc/diskstats"
MOUNTINFO = "/proc/self/mountinfo"
SECTOR = 512  # /proc/diskstats counts 512-byte sectors whatever the device's own sector size
#: file systems whose data is memory: a read from them is a cache read by definition
MEMORY_FS = frozenset({"tmpfs", "ramfs", "devtmpfs", "hugetlbfs"})


@dataclass(frozen=True)
class ProcIO:
    read_bytes: int
    write_bytes: int
    cancelled_write_bytes: int

    def __sub__(self, other: ProcIO) -> ProcIO:
        return ProcIO(
            self.read_bytes - other.read_bytes,
            self.write_bytes - other.write_bytes,
            self.cancelled_write_bytes - other.cancelled_write_bytes,
        )


@dataclass(frozen=True)
class DiskIO:
    read_bytes: int
    write_bytes: int

    def __sub__(self, other: DiskIO) -> DiskIO:
        return DiskIO(self.read_bytes - other.read_bytes, self.write_bytes - other.write_bytes)


@dataclass(frozen=True)
class Device:
    """Where a path's bytes live: a block device named as /proc/diskstats names it, or why none.

    `memory` is set for tmpfs-like file systems (their reads are memory by definition)."""

    name: str | None
    why: str | None = None
    memory: bool = False
    fstype: str | None = None


def parse_proc_io(text: str) -> ProcIO | None:
    fields: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        try:
            fields[key.strip()] = int(value)
        except ValueError:
            continue
    try:
        return ProcIO(fields["read_bytes"], fields["write_bytes"], fields["cancelled_write_bytes"])
    except KeyError:
        return None


def read_proc_io(path: str = PROC_IO) -> ProcIO | None:
    """This process's counters; None where /proc/self/io is absent or unreadable."""
    try:
        with open(path) as fh:
            return parse_proc_io(fh.read())
    except OSError:
        return None


def parse_diskstats(text: str, name: str) -> DiskIO | None:
    """Sectors read (field 6) and written (field 10) of device `name`, in bytes."""
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 10 and f[2] == name:
            return DiskIO(int(f[5]) * SECTOR, int(f[9]) * SECTOR)
    return None


def read_diskstats(name: str, path: str = DISKSTATS) -> DiskIO | None:
    try:
        with open(path) as fh:
            return parse_diskstats(fh.read(), name)
    except OSError:
        return None


def _diskstats_name(major: int, minor: int, text: str) -> str | None:
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 3 and f[0] == str(major) and f[1] == str(minor):
            return f[2]
    return None


def _mount_of(major: int, minor: int, mountinfo: str) -> tuple[str, str] | None:
    """(fstype, source) of the mount whose st_dev is major:minor (mountinfo field 3)."""
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        f, r = left.split(), right.split()
        if sep and len(f) >= 3 and f[2] == f"{major}:{minor}" and len(r) >= 2:
            return r[0], r[1]
    return None


def find_device(path: str, diskstats: str | None = None, mountinfo: str | None = None) -> Device:
    """The block device holding `path` (partitions and device-mapper devices have their own
    diskstats line), or why there is none: tmpfs (memory), overlay, NFS, FUSE... The texts of
    /proc/diskstats and /proc/self/mountinfo can be passed in (tests); they are read otherwise."""
    try:
        dev = os.stat(path).st_dev
    except OSError as exc:
        return Device(None, f"cannot stat {path}: {exc.strerror}")
    major, minor = os.major(dev), os.minor(dev)
    try:
        if diskstats is None:
            with open(DISKSTATS) as fh:
                diskstats = fh.read()
        if mountinfo is None:
            with open(MOUNTINFO) as fh:
                mountinfo = fh.read()
    except OSError as exc:
        return Device(None, f"{exc.filename} is not readable ({exc.strerror}): device counters unknown")
    mount = _mount_of(major, minor, mountinfo)
    fstype = mount[0] if mount else None
    if major != 0:
        name = _diskstats_name(major, minor, diskstats)
        if name is not None:
            return Device(name, fstype=fstype)
        return Device(None, f"device {major}:{minor} has no line in {DISKSTATS}", fstype=fstype)
    # an anonymous device (major 0): a memory, network, stacked or multi-device file system
    if mount is None:
        return Device(None, f"no mount found for device {major}:{minor} of {path}")
    fstype, source = mount
    if fstype in MEMORY_FS:
        return Device(
            None, f"{fstype}: file data lives in memory, so every read is a memory read", True, fstype
        )
    if source.startswith("/dev/"):  # btrfs and the like: the mount's source is the block device
        try:
            rdev = os.stat(source).st_rdev
            name = _diskstats_name(os.major(rdev), os.minor(rdev), diskstats)
        except OSError:
            name = None
        if name is not None:
            return Device(name, fstype=fstype)
    return Device(None, f"{fstype} file system ({source}): no local block device to count", fstype=fstype)
