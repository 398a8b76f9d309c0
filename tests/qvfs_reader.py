#!/usr/bin/env python3
"""An independent QVFS reader, written from docs/qvfs-format.md alone.

It shares no code with queryfs: it is the proof that a plain QVFS reader
can open the images queryfs writes.

    qvfs_reader.py list IMAGE.qfi [--plain]
        one line per entry: "d|f <size> <path>" (paths from the root)
    qvfs_reader.py extract IMAGE.qfi OUTDIR [--plain]
        writes the tree under OUTDIR

--plain ignores the long-name extension (section 6), as a reader that
knows only sections 1-5 would. Exit status 0 on success, 1 when the image
breaks the format (with the reason on stderr).
"""

import os
import struct
import sys

CLUSTER = 4096
ENTRY = 64
EOC = 0xFFFFFFFF
FREE = 0
EMPTY, DELETED, DIRECTORY, FILE, LONGNAME = 0x00, 0x01, 0x02, 0x04, 0x80


class BadImage(Exception):
    pass


class Image:
    def __init__(self, qfi_path, plain):
        base, _ = os.path.splitext(qfi_path)
        with open(qfi_path, "rb") as f:
            raw = f.read()
        if len(raw) == 0 or len(raw) % 4:
            raise BadImage("FAT size %d is not a positive multiple of 4" % len(raw))
        self.fat = struct.unpack("<%dI" % (len(raw) // 4), raw)
        self.n = len(self.fat)
        if self.fat[0] == FREE:
            raise BadImage("FAT[0] is free")
        self.data = open(base + ".qfd", "rb")
        self.plain = plain

    def chain(self, start):
        if not 0 <= start < self.n:
            raise BadImage("start cluster %d outside the image" % start)
        out, cur = [], start
        while True:
            if len(out) >= self.n:
                raise BadImage("chain from %d loops" % start)
            v = self.fat[cur]
            if v == FREE:
                raise BadImage("chain from %d reaches free cluster %d" % (start, cur))
            out.append(cur)
            if v == EOC:
                return out
            if not 1 <= v < self.n:
                raise BadImage("FAT[%d] = %#x is invalid" % (cur, v))
            cur = v

    def cluster(self, i):
        self.data.seek(i * CLUSTER)
        b = self.data.read(CLUSTER)
        return b + bytes(CLUSTER - len(b))

    @staticmethod
    def checksum(field):
        s = 0
        for b in field:
            s = (((s >> 1) | (s << 7)) + b) & 0xFF
        return s

    def folder(self, start):
        """Live entries: (name, is_dir, start, size, modify_time)."""
        out = []
        frags = []
        for c in self.chain(start):
            block = self.cluster(c)
            for k in range(0, CLUSTER, ENTRY):
                e = block[k:k + ENTRY]
                prop = e[0]
                if prop == EMPTY:
                    return out
                if prop & DELETED:
                    if prop & LONGNAME and not self.plain:
                        frags.append(e)
                    else:
                        frags = []
                    continue
                field = e[1:40]
                short = field.split(b"\0", 1)[0].decode("utf-8")
                ctime, mtime, first, size = struct.unpack("<IIii", e[40:56])
                name = self.long_name(frags, field) or short
                frags = []
                if (prop & DIRECTORY) == (prop & FILE):
                    raise BadImage("entry %r is neither file nor folder" % short)
                out.append((name, bool(prop & DIRECTORY), first, size, mtime))
        return out

    def long_name(self, frags, field):
        if not frags:
            return None
        # Only the last complete run belongs to this entry.
        starts = [i for i, f in enumerate(frags) if f[1] == 1]
        if not starts:
            return None
        run = frags[starts[-1]:]
        n = run[0][2]
        if len(run) != n or not 1 <= n <= 5:
            return None
        want = self.checksum(field)
        parts = []
        for i, f in enumerate(run):
            if f[1] != i + 1 or f[2] != n or f[3] != want:
                return None
            parts.append(f[4:64])
        raw = b"".join(parts).rstrip(b"\0")
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if not name or "/" in name or "\0" in name or len(raw) > 255:
            return None
        return name

    def content(self, start, size):
        if size < 0:
            raise BadImage("negative size")
        ch = self.chain(start)
        if len(ch) * CLUSTER < size:
            raise BadImage("size %d needs more than %d clusters" % (size, len(ch)))
        out = bytearray()
        for c in ch:
            if len(out) >= size:
                break
            out += self.cluster(c)
        return bytes(out[:size])

    def walk(self, start=0, prefix=""):
        for name, is_dir, first, size, mtime in self.folder(start):
            path = prefix + "/" + name
            yield path, is_dir, first, size, mtime
            if is_dir:
                yield from self.walk(first, path)


def main(argv):
    plain = "--plain" in argv
    args = [a for a in argv[1:] if a != "--plain"]
    if len(args) < 2 or args[0] not in ("list", "extract"):
        sys.stderr.write(__doc__)
        return 2
    try:
        img = Image(args[1], plain)
        if args[0] == "list":
            for path, is_dir, _, size, _ in img.walk():
                print("%s %d %s" % ("d" if is_dir else "f", size, path))
        else:
            out = args[2]
            os.makedirs(out, exist_ok=True)
            for path, is_dir, first, size, _ in img.walk():
                dest = os.path.join(out, path.lstrip("/"))
                if is_dir:
                    os.makedirs(dest, exist_ok=True)
                else:
                    with open(dest, "wb") as f:
                        f.write(img.content(first, size))
    except (BadImage, UnicodeDecodeError, OSError) as e:
        sys.stderr.write("qvfs_reader: %s\n" % e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
