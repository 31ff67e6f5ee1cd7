"""KVM's binary statistics format (``KVM_GET_STATS_FD``): parser and writer.

A VM or vCPU statistics file descriptor reads as one file made of four
blocks, all little-endian on the hosts kvmstat runs on (native byte order):

* the header (``struct kvm_stats_header``, six ``u32``): ``flags``,
  ``name_size``, ``num_desc``, ``id_offset``, ``desc_offset``,
  ``data_offset``;
* the id string (``name_size`` bytes, NUL-terminated) at ``id_offset``,
  ``kvm-<pid>`` for a VM and ``kvm-<pid>/vcpu-<n>`` for a vCPU;
* ``num_desc`` descriptors (``struct kvm_stats_desc``: ``u32 flags``,
  ``s16 exponent``, ``u16 size``, ``u32 offset``, ``u32 bucket_size``,
  then the name in ``name_size`` bytes) at ``desc_offset``;
* the data block at ``data_offset``: each statistic is ``size`` ``u64``
  values at ``offset`` bytes into the block.

Descriptor ``flags`` hold the type (bits 0-3: cumulative, instant, peak,
linear histogram, logarithmic histogram), the unit (bits 4-7: none, bytes,
seconds, cycles, boolean) and the base of the exponent (bits 8-11: 10 or 2):
a value ``v`` means ``v * base**exponent`` units.  For histograms the values
are sample counts per bucket and the unit applies to the bucket bounds.

Only the header and descriptors are parsed once per descriptor; the data
block is decoded by :meth:`StatsLayout.decode`, one ``struct`` call.
:func:`encode_stats` writes the same format (used by the tests).  Anything
malformed raises :class:`StatsFormatError` with a one-line reason.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ..errors import StatsFormatError

__all__ = [
    "StatsFormatError", "StatsHeader", "StatDesc", "StatsLayout", "Histogram",
    "read_layout", "parse_stats", "encode_stats", "bucket_bounds",
    "TYPE_CUMULATIVE", "TYPE_INSTANT", "TYPE_PEAK", "TYPE_LINEAR_HIST", "TYPE_LOG_HIST",
    "UNIT_NONE", "UNIT_BYTES", "UNIT_SECONDS", "UNIT_CYCLES", "UNIT_BOOLEAN",
    "BASE_POW10", "BASE_POW2", "HEADER_SIZE", "DESC_FIXED_SIZE",
]

# Flag fields, from <linux/kvm.h> (values already shifted down to 0..15).
TYPE_SHIFT, UNIT_SHIFT, BASE_SHIFT = 0, 4, 8
FIELD_MASK = 0xF
TYPE_CUMULATIVE, TYPE_INSTANT, TYPE_PEAK, TYPE_LINEAR_HIST, TYPE_LOG_HIST = range(5)
UNIT_NONE, UNIT_BYTES, UNIT_SECONDS, UNIT_CYCLES, UNIT_BOOLEAN = range(5)
BASE_POW10, BASE_POW2 = range(2)

TYPE_NAMES = {TYPE_CUMULATIVE: "cumulative", TYPE_INSTANT: "instant", TYPE_PEAK: "peak",
              TYPE_LINEAR_HIST: "linear-hist", TYPE_LOG_HIST: "log-hist"}
UNIT_NAMES = {UNIT_NONE: "none", UNIT_BYTES: "bytes", UNIT_SECONDS: "seconds",
              UNIT_CYCLES: "cycles", UNIT_BOOLEAN: "boolean"}
BASE_VALUES = {BASE_POW10: 10, BASE_POW2: 2}

_HEADER = struct.Struct("<6I")
_DESC = struct.Struct("<IhHII")
HEADER_SIZE = _HEADER.size          # 24
DESC_FIXED_SIZE = _DESC.size        # 16, followed by the name
WORD = 8                            # every value is a u64

# Sanity limits so that a corrupt header cannot make us allocate gigabytes.
# The kernel uses 48-byte names, a few dozen descriptors and a few KiB of data.
MAX_NAME_SIZE = 4096
MAX_BLOCK_SIZE = 16 << 20

Reader = Callable[[int, int], bytes]   # (size, offset) -> bytes, like os.pread


@dataclass(frozen=True)
class StatsHeader:
    """``struct kvm_stats_header``."""

    flags: int
    name_size: int
    num_desc: int
    id_offset: int
    desc_offset: int
    data_offset: int

    @property
    def desc_size(self) -> int:
        """Size of one descriptor, name included."""
        return DESC_FIXED_SIZE + self.name_size


@dataclass(frozen=True)
class StatDesc:
    """One ``struct kvm_stats_desc``: what a statistic is and where it lives."""

    name: str
    flags: int = 0
    exponent: int = 0
    size: int = 1
    offset: int = 0
    bucket_size: int = 0

    @property
    def type(self) -> int:
        """Type code (``TYPE_*``); codes newer than this module are kept as is."""
        return (self.flags >> TYPE_SHIFT) & FIELD_MASK

    @property
    def unit(self) -> int:
        """Unit code (``UNIT_*``)."""
        return (self.flags >> UNIT_SHIFT) & FIELD_MASK

    @property
    def base(self) -> int:
        """Exponent base code (``BASE_*``)."""
        return (self.flags >> BASE_SHIFT) & FIELD_MASK

    @property
    def type_name(self) -> str:
        """``cumulative``, ``instant``, ``peak``, ``linear-hist``, ``log-hist`` or ``type-N``."""
        return TYPE_NAMES.get(self.type, f"type-{self.type}")

    @property
    def unit_name(self) -> str:
        """``none``, ``bytes``, ``seconds``, ``cycles``, ``boolean`` or ``unit-N``."""
        return UNIT_NAMES.get(self.unit, f"unit-{self.unit}")

    @property
    def base_value(self) -> Optional[int]:
        """10 or 2, or None for a base code this module does not know."""
        return BASE_VALUES.get(self.base)

    @property
    def scale(self) -> Optional[float]:
        """Factor turning a raw value (or bucket bound) into its unit, or None."""
        base = self.base_value
        return None if base is None else float(base) ** self.exponent

    @property
    def is_histogram(self) -> bool:
        """True for linear and logarithmic histograms."""
        return self.type in (TYPE_LINEAR_HIST, TYPE_LOG_HIST)

    @property
    def is_scalar(self) -> bool:
        """True for a single cumulative, instant or peak value."""
        return self.size == 1 and self.type in (TYPE_CUMULATIVE, TYPE_INSTANT, TYPE_PEAK)

    @property
    def first_word(self) -> int:
        """Index of the first value in the data block counted in u64 words."""
        return self.offset // WORD


def bucket_bounds(desc: StatDesc) -> List[Tuple[int, Optional[int]]]:
    """Bucket ranges ``[low, high)`` of a histogram in raw units (high None = +inf).

    Linear: bucket N (0-based) is ``[N*bucket_size, (N+1)*bucket_size)``, the
    last one open-ended.  Logarithmic: ``[0, 1)``, then ``[2**(N-1), 2**N)``,
    the last one open-ended (KVM API documentation, KVM_GET_STATS_FD).
    """
    n = desc.size
    if desc.type == TYPE_LINEAR_HIST:
        step = desc.bucket_size
        return [(i * step, (i + 1) * step if i < n - 1 else None) for i in range(n)]
    if desc.type == TYPE_LOG_HIST:
        bounds: List[Tuple[int, Optional[int]]] = []
        for i in range(n):
            low = 0 if i == 0 else 1 << (i - 1)
            bounds.append((low, (1 << i) if i < n - 1 else None))
        return bounds
    raise StatsFormatError(f"statistic '{desc.name}' is a {desc.type_name} value, not a histogram")


@dataclass(frozen=True)
class Histogram:
    """Sample counts per bucket of one histogram statistic."""

    desc: StatDesc
    counts: Tuple[int, ...]

    @property
    def name(self) -> str:
        return self.desc.name

    @property
    def total(self) -> int:
        """Number of samples in all buckets."""
        return sum(self.counts)

    def bounds(self) -> List[Tuple[int, Optional[int]]]:
        """Bucket ranges in raw units, see :func:`bucket_bounds`."""
        return bucket_bounds(self.desc)

    def as_dict(self) -> dict:
        """A JSON-ready description: kind, unit, exponent, buckets with counts."""
        return {
            "type": self.desc.type_name,
            "unit": self.desc.unit_name,
            "base": self.desc.base_value,
            "exponent": self.desc.exponent,
            "bucket_size": self.desc.bucket_size,
            "buckets": [[low, high, count]
                        for (low, high), count in zip(self.bounds(), self.counts)],
        }


@dataclass(frozen=True)
class StatsLayout:
    """Everything of a statistics file but its values: header, id, descriptors.

    ``signature`` identifies the layout (two files with equal signatures
    decode the same way), ``data_size`` is the number of bytes of the data
    block that the descriptors cover.
    """

    header: StatsHeader
    id: str
    descriptors: Tuple[StatDesc, ...]
    data_size: int
    signature: bytes

    @property
    def data_offset(self) -> int:
        return self.header.data_offset

    @property
    def words(self) -> int:
        """Number of u64 values in the data block."""
        return self.data_size // WORD

    def by_name(self) -> Dict[str, StatDesc]:
        """Descriptors by statistic name."""
        return {d.name: d for d in self.descriptors}

    def decode(self, data: bytes) -> Tuple[int, ...]:
        """The data block as a tuple of u64 words (index = offset // 8)."""
        if len(data) != self.data_size:
            raise StatsFormatError(f"statistics data of '{self.id}' is {len(data)} bytes, "
                                   f"expected {self.data_size}")
        return struct.unpack(f"<{self.words}Q", data)

    def values(self, words: Sequence[int]) -> Dict[str, object]:
        """Each statistic's value: an int for single values, a tuple otherwise."""
        out: Dict[str, object] = {}
        for d in self.descriptors:
            first = d.first_word
            if d.size == 1 and not d.is_histogram:
                out[d.name] = words[first]
            else:
                out[d.name] = tuple(words[first:first + d.size])
        return out


def _read_exact(read: Reader, size: int, offset: int, what: str) -> bytes:
    data = read(size, offset)
    if len(data) != size:
        raise StatsFormatError(f"truncated {what}: {len(data)} of {size} bytes at offset {offset}")
    return data


def _decode_name(raw: bytes, what: str) -> str:
    end = raw.find(b"\0")
    if end < 0:
        raise StatsFormatError(f"{what} is not NUL-terminated within {len(raw)} bytes")
    try:
        text = raw[:end].decode("ascii")
    except UnicodeDecodeError:
        raise StatsFormatError(f"{what} is not ASCII: {raw[:end]!r}") from None
    return text


def _check_regions(regions: List[Tuple[str, int, int]]) -> None:
    """Raise if two non-empty [offset, offset+size) regions overlap."""
    spans = sorted((start, start + size, name) for name, start, size in regions if size > 0)
    for (s1, e1, n1), (s2, e2, n2) in zip(spans, spans[1:]):
        if s2 < e1:
            raise StatsFormatError(f"the {n1} block [{s1}, {e1}) overlaps the {n2} block [{s2}, {e2})")


def parse_header(raw: bytes) -> StatsHeader:
    """Parse and check ``struct kvm_stats_header`` (the first 24 bytes)."""
    if len(raw) < HEADER_SIZE:
        raise StatsFormatError(f"truncated header: {len(raw)} of {HEADER_SIZE} bytes")
    header = StatsHeader(*_HEADER.unpack_from(raw))
    if not 1 <= header.name_size <= MAX_NAME_SIZE:
        raise StatsFormatError(f"name size {header.name_size} is out of range 1..{MAX_NAME_SIZE}")
    if header.num_desc * header.desc_size > MAX_BLOCK_SIZE:
        raise StatsFormatError(f"{header.num_desc} descriptors of {header.desc_size} bytes "
                               f"exceed {MAX_BLOCK_SIZE} bytes")
    for name in ("id_offset", "desc_offset", "data_offset"):
        if getattr(header, name) < HEADER_SIZE:
            raise StatsFormatError(f"{name} {getattr(header, name)} points into the header")
    return header


def parse_descriptors(raw: bytes, header: StatsHeader) -> Tuple[StatDesc, ...]:
    """Parse and check the descriptor block of *header*."""
    size = header.desc_size
    if len(raw) != header.num_desc * size:
        raise StatsFormatError(f"descriptor block is {len(raw)} bytes, expected "
                               f"{header.num_desc * size}")
    descs = []
    seen = set()
    for i in range(header.num_desc):
        base = i * size
        flags, exponent, count, offset, bucket_size = _DESC.unpack_from(raw, base)
        name = _decode_name(raw[base + DESC_FIXED_SIZE:base + size], f"name of descriptor {i}")
        if not name or not name.isprintable() or any(c.isspace() for c in name):
            raise StatsFormatError(f"descriptor {i} has an invalid name {name!r}")
        if name in seen:
            raise StatsFormatError(f"statistic '{name}' is described twice")
        seen.add(name)
        desc = StatDesc(name, flags, exponent, count, offset, bucket_size)
        if count == 0:
            raise StatsFormatError(f"statistic '{name}' has no values (size 0)")
        if offset % WORD:
            raise StatsFormatError(f"statistic '{name}' is at offset {offset}, "
                                   f"not a multiple of {WORD}")
        if desc.type == TYPE_LINEAR_HIST and bucket_size == 0:
            raise StatsFormatError(f"linear histogram '{name}' has bucket size 0")
        descs.append(desc)
    return tuple(descs)


def read_layout(read: Reader) -> StatsLayout:
    """Read header, id and descriptors through *read(size, offset)*.

    *read* is ``os.pread`` bound to a stats fd (``lambda n, o: os.pread(fd,
    n, o)``) or a slice of a byte string; it is called three times.
    """
    header = parse_header(_read_exact(read, HEADER_SIZE, 0, "header"))
    stats_id = _decode_name(_read_exact(read, header.name_size, header.id_offset, "id string"),
                            "id string")
    desc_raw = _read_exact(read, header.num_desc * header.desc_size, header.desc_offset,
                           "descriptor block")
    descs = parse_descriptors(desc_raw, header)
    data_size = max((d.offset + WORD * d.size for d in descs), default=0)
    if data_size > MAX_BLOCK_SIZE:
        raise StatsFormatError(f"statistics data of {data_size} bytes exceeds {MAX_BLOCK_SIZE}")
    _check_regions([("header", 0, HEADER_SIZE), ("id", header.id_offset, header.name_size),
                    ("descriptor", header.desc_offset, len(desc_raw)),
                    ("data", header.data_offset, data_size)])
    signature = _HEADER.pack(0, header.name_size, header.num_desc, 0, 0, header.data_offset) + desc_raw
    return StatsLayout(header, stats_id, descs, data_size, signature)


def blob_reader(blob: bytes) -> Reader:
    """A :data:`Reader` over an in-memory statistics file."""
    return lambda size, offset: blob[offset:offset + size]


def parse_stats(blob: bytes) -> Tuple[StatsLayout, Tuple[int, ...]]:
    """Parse a whole statistics file image: its layout and its data words."""
    read = blob_reader(blob)
    layout = read_layout(read)
    data = _read_exact(read, layout.data_size, layout.data_offset, "data block")
    return layout, layout.decode(data)


def encode_stats(stats_id: str, descriptors: Sequence[StatDesc],
                 values: Mapping[str, Sequence[int]], *, name_size: int = 48,
                 flags: int = 0, id_offset: Optional[int] = None,
                 desc_offset: Optional[int] = None,
                 data_offset: Optional[int] = None) -> bytes:
    """Write a statistics file image in the KVM_GET_STATS_FD format.

    *values* maps each descriptor's name to its ``size`` u64 values (missing
    names are zeros).  Blocks follow each other (header, id, descriptors,
    data) unless offsets are given.  Raises :class:`ValueError` for input
    that cannot be written (a name longer than ``name_size - 1`` bytes...).
    """
    def name_bytes(text: str) -> bytes:
        raw = text.encode("ascii")
        if len(raw) >= name_size:
            raise ValueError(f"name {text!r} does not fit in {name_size} bytes with its NUL")
        return raw.ljust(name_size, b"\0")

    id_offset = HEADER_SIZE if id_offset is None else id_offset
    desc_offset = id_offset + name_size if desc_offset is None else desc_offset
    desc_block = b"".join(
        _DESC.pack(d.flags, d.exponent, d.size, d.offset, d.bucket_size) + name_bytes(d.name)
        for d in descriptors)
    data_offset = desc_offset + len(desc_block) if data_offset is None else data_offset
    data_size = max((d.offset + WORD * d.size for d in descriptors), default=0)
    data = bytearray(data_size)
    for d in descriptors:
        items = list(values.get(d.name, [0] * d.size))
        if len(items) != d.size:
            raise ValueError(f"'{d.name}' needs {d.size} values, got {len(items)}")
        struct.pack_into(f"<{d.size}Q", data, d.offset, *items)
    blob = bytearray(max(data_offset + data_size, desc_offset + len(desc_block),
                         id_offset + name_size, HEADER_SIZE))
    blob[0:HEADER_SIZE] = _HEADER.pack(flags, name_size, len(descriptors), id_offset,
                                       desc_offset, data_offset)
    blob[id_offset:id_offset + name_size] = name_bytes(stats_id)
    blob[desc_offset:desc_offset + len(desc_block)] = desc_block
    blob[data_offset:data_offset + data_size] = data
    return bytes(blob)
