"""Census probes for CPython 3.11: first-hit line recording with no tracer.

On 3.11 a thread traced with ``sys.settrace`` runs every frame in the interpreter's tracing
mode, so a tracer cannot record first hits at ~zero steady cost. Census there inserts a probe
into the bytecode of the code under the source roots instead: at the first instruction of each
line (and at each jump or handler target), a call ``hit(key)`` that records the line under the
trace that is current and then turns its own first code unit into a ``JUMP_FORWARD`` over the
probe. A probe that has fired costs one jump, until compaction gives the function code
without it; a new census epoch puts every probe back.

:func:`instrument` builds the probed copy of a code object (nested code objects included),
re-encoding jumps, the exception table and the location table; :class:`Probes` keeps the
probes, arms and disarms them, puts probed code into live functions and, through an import
hook, into modules imported later, and compacts.
"""

from __future__ import annotations

import dis
import gc
import logging
import opcode
import sys
import threading
import weakref
from types import CodeType, FunctionType
from typing import Any, Callable, Iterator, Optional

from runcov.tracing._base import GENERATOR_FLAGS
from runcov.tracing._scope import listen_to_imports, new_namespaces, stop_listening

log = logging.getLogger("runcov.tracing")

#: Probes need 3.11's bytecode: its cache layout, relative jumps and table formats.
SUPPORTED = sys.version_info[:2] == (3, 11)

_OP = dis.opmap
_EXTENDED_ARG = _OP["EXTENDED_ARG"]
_CACHES: list[int] = list(getattr(opcode, "_inline_cache_entries", [0] * 256))
_JREL = frozenset(dis.hasjrel)
_BACKWARD = frozenset(op for op in dis.hasjrel if "BACKWARD" in dis.opname[op])
#: Instructions a probe must never precede: the interpreter reads them together with the one
#: before (``KW_NAMES``/``PRECALL``/``CALL``, ``SEND``/``YIELD_VALUE``/``RESUME``).
_NO_PROBE_BEFORE = frozenset(
    _OP[name] for name in ("RESUME", "PRECALL", "CALL", "YIELD_VALUE") if name in _OP
)
#: A handler's first instruction, which only moves the exception it handles into place
#: (nothing a line event there could tell apart): the probe of its line (a ``with``
#: statement's, whose handler starts on its line) goes after it, where the exact probes find
#: that exception handled (``ExactProbes`` reads from it where a throw() entered the frame).
_PUSH_EXC_INFO = _OP.get("PUSH_EXC_INFO", -1)
_RESUME = _OP.get("RESUME", -1)
#: ``SEND`` is the target of its own loop's backward jump, which a line tracer does not see as
#: a new line event only while it lands on the ``SEND`` itself: never probed (the line was
#: entered before it).
_SEND = _OP.get("SEND", -1)
#: The stack a probe needs on top of the code's own: NULL, ``hit`` and the key.
_PROBE_STACK = 3
#: An armed probe's first code unit (a fired one's is a ``JUMP_FORWARD`` over the probe).
_ARMED_HEAD = bytes((_OP["PUSH_NULL"], 0))
_RETURN_VALUE = _OP["RETURN_VALUE"]
#: Backward jumps a line tracer sees as a new line event even on the same line (not the
#: ``yield from`` loop's).
_BACK_EVENT = frozenset(op for op in _BACKWARD if dis.opname[op] != "JUMP_BACKWARD_NO_INTERRUPT")

#: Probe kinds (the C extension's ExactProbes reads them): a line; a frame's start after its
#: first RESUME; a resumption after a plain yield's RESUME; a return (before RETURN_VALUE); a
#: backward jump to the same line. Census uses only LINE probes; exact scopes all of them.
LINE, ENTRY, RESUME, EXIT, BACK = range(5)


class _Instr:
    __slots__ = (
        "after",
        "arg",
        "before",
        "caches",
        "ext",
        "line",
        "new_arg",
        "new_op",
        "new_start",
        "op",
        "probe",
    )

    def __init__(self, op: int, arg: int, line: Optional[int]) -> None:
        self.op = op
        self.arg = arg
        self.caches = _CACHES[op]
        self.line = line
        self.probe: Optional[int] = None  # the line its probe records
        self.new_start = 0  # where its probe (if any), else it, starts in the new code
        self.new_op = 0  # where the op itself lands in the new code
        self.ext = 0  # EXTENDED_ARG units it needs in the new code
        self.new_arg = arg  # its argument in the new code (jumps: re-aimed)
        #: Probes around it, as (kind, line, constant slot of the key): before it (after the
        #: jump target, so jumps run them) and after it (RESUME's).
        self.before: list[tuple[int, int, int]] = []
        self.after: list[tuple[int, int, int]] = []


def _ext_units(arg: int) -> int:
    n = 0
    while arg > 0xFF:
        arg >>= 8
        n += 1
    return n


def _decode(code: CodeType) -> tuple[list[_Instr], dict[int, _Instr]]:
    raw = code.co_code
    positions = list(code.co_positions())
    instrs: list[_Instr] = []
    at: dict[int, _Instr] = {}  # code unit of the op -> instruction
    ext = prefixes = 0
    unit = 0
    count = len(raw) // 2
    while unit < count:
        op, arg = raw[2 * unit], raw[2 * unit + 1]
        if op == _EXTENDED_ARG:
            ext = (ext | arg) << 8
            prefixes += 1
            unit += 1
            continue
        instr = _Instr(op, ext | arg, positions[unit][0])
        instr.ext = prefixes  # as found (the layout sets what the new code needs)
        instrs.append(instr)
        at[unit] = instr
        ext = prefixes = 0
        unit += 1 + instr.caches
    return instrs, at


def _starts(at: dict[int, _Instr]) -> dict[int, int]:
    """Every code unit where an instruction can be entered (its op, or the first of its
    ``EXTENDED_ARG`` prefixes: jumps land there) -> the instruction's index."""
    index: dict[int, int] = {}
    for i, (unit, instr) in enumerate(sorted(at.items())):
        index[unit] = i
        for k in range(1, instr.ext + 1):
            index[unit - k] = i
    return index


def _jump_target(instr: _Instr, op_unit: int) -> int:
    if instr.op in _BACKWARD:
        return op_unit + 1 - instr.arg
    return op_unit + 1 + instr.arg


def _varint(value: int, out: bytearray) -> None:
    while value >= 64:
        out.append(64 | (value & 63))
        value >>= 6
    out.append(value)


def _svarint(value: int, out: bytearray) -> None:
    _varint(((-value) << 1) | 1 if value < 0 else value << 1, out)


def _parse_exception_table(table: bytes) -> list[tuple[int, int, int, int]]:
    """(start, end, target, depth_lasti) in code units."""

    def varint(it: Iterator[int]) -> int:
        b = next(it)
        value = b & 63
        while b & 64:
            b = next(it)
            value = (value << 6) | (b & 63)
        return value

    entries: list[tuple[int, int, int, int]] = []
    it = iter(table)
    while True:
        try:
            start = varint(it)
        except StopIteration:
            return entries
        length = varint(it)
        target = varint(it)
        dl = varint(it)
        entries.append((start, start + length, target, dl))


def _exception_varint(value: int, out: bytearray, first: bool) -> None:
    groups = [value & 63]
    value >>= 6
    while value:
        groups.append(value & 63)
        value >>= 6
    groups.reverse()
    for i, group in enumerate(groups):
        if i < len(groups) - 1:
            group |= 64
        if i == 0 and first:
            group |= 128
        out.append(group)


def _location_table(
    positions: list[tuple[Optional[int], Optional[int], Optional[int], Optional[int]]],
    firstlineno: int,
) -> bytes:
    """3.11's location table for one position per code unit (long and no-location forms)."""
    out = bytearray()
    previous = firstlineno
    i = 0
    count = len(positions)
    while i < count:
        position = positions[i]
        length = 1
        while length < 8 and i + length < count and positions[i + length] == position:
            length += 1
        line, end_line, col, end_col = position
        if line is None:
            out.append(0x80 | (15 << 3) | (length - 1))
        else:
            out.append(0x80 | (14 << 3) | (length - 1))
            _svarint(line - previous, out)
            _varint((end_line if end_line is not None else line) - line, out)
            _varint(0 if col is None else col + 1, out)
            _varint(0 if end_col is None else end_col + 1, out)
            previous = line
        i += length
    return bytes(out)


class Probe:
    """One probe: where its head is, and the line it records."""

    __slots__ = ("armed", "code", "filename", "index", "jump", "kind", "line", "unit")

    def __init__(self, filename: str, line: int, kind: int = LINE) -> None:
        self.filename = filename
        self.line = line
        self.kind = kind
        self.index = -1  # the instruction it precedes, counted in the original code
        self.code: Optional[CodeType] = None  # the probed code, once built
        self.unit = 0  # its head's code unit in that code
        self.jump = b""  # JUMP_FORWARD over the probe
        self.armed = kind == LINE  # (a census probe's state)


def instrument(
    code: CodeType,
    hit: Callable[[int], None],
    new_probe: Callable[[CodeType, int, int, bool], int],
    probes: dict[int, Probe],
    wanted: Callable[[CodeType], bool],
    done: Callable[[CodeType, CodeType], None],
    keep: Optional[Callable[[int], bool]] = None,
    nested: Optional[tuple[Any, ...]] = None,
) -> CodeType:
    """The probed copy of ``code`` and of the nested code objects ``wanted`` accepts.

    ``new_probe(code, line, kind, at_handler)`` registers a probe and returns its key (in
    ``probes``, whose entries are then told where their head is); ``done(probed, original)``
    is told of every code object probed. Besides the LINE probes, the exact-mode probes go
    in: ENTRY after the first RESUME, RESUME after a plain yield's, EXIT before each
    RETURN_VALUE, BACK before each backward jump to the same line. ``keep(index)`` (a census
    variant): only LINE probes, before the instructions it accepts, and the nested code
    objects from ``nested`` (``code``'s constants as another probed copy has them) instead of
    probing them again.
    """
    consts = list(code.co_consts)
    if nested is not None:
        consts = list(nested[: len(consts)])
    else:
        for i, const in enumerate(consts):
            if isinstance(const, CodeType) and wanted(const):
                consts[i] = instrument(const, hit, new_probe, probes, wanted, done)
    instrs, at = _decode(code)
    if not instrs:
        return code.replace(co_consts=tuple(consts))
    # Where probes go: after RESUME, at the first instruction of each line and at each jump
    # and exception handler target (control can enter a line there), moved past instructions
    # that must follow the one before.
    targets: set[int] = set()
    for unit, instr in at.items():
        if instr.op in _JREL:
            targets.add(_jump_target(instr, unit))
    table = _parse_exception_table(code.co_exceptiontable)
    handlers = {target for _, _, target, _ in table}
    targets.update(handlers)
    resume = next((i for i, instr in enumerate(instrs) if instr.op == _RESUME), -1)
    ops = sorted(at)
    unit_to_index = _starts(at)
    entered = {unit_to_index[target] for target in targets if target in unit_to_index}
    previous_line: Optional[int] = None
    pending: Optional[int] = None  # a line whose probe moves to the next instruction
    for index, instr in enumerate(instrs):
        line = instr.line
        if index <= resume:
            previous_line = line
            continue
        start = line is not None and line > 0 and (
            index == resume + 1 or line != previous_line or index in entered
        )
        if pending is not None and line != pending:
            pending = None  # the line left before a probe could go in (not seen in practice)
        if instr.op == _SEND and line == previous_line:
            start = False
        if start or pending is not None:
            if instr.op in _NO_PROBE_BEFORE or instr.op == _PUSH_EXC_INFO:
                pending = line
            else:
                if keep is None or keep(index):
                    instr.probe = line
                pending = None
        previous_line = line
    # The first LINE probe a handler runs (its first instructions may have no line).
    at_handler: set[int] = set()
    for target in handlers:
        for index in range(unit_to_index.get(target, len(instrs)), len(instrs)):
            if instrs[index].probe is not None:
                at_handler.add(index)
                break
    if keep is None:
        exact_probes(instrs, ops, unit_to_index, resume)
    hit_arg = len(consts)
    consts.append(hit)
    keys: list[int] = []

    def key_slot(kind: int, line: int, index: int) -> int:
        keys.append(new_probe(code, line, kind, index in at_handler))
        probes[keys[-1]].index = index
        consts.append(keys[-1])
        return len(consts) - 1

    for index, instr in enumerate(instrs):
        marked_before, marked_after = instr.before, instr.after
        instr.before, instr.after = [], []
        if instr.probe is not None:
            instr.before.append((LINE, instr.probe, key_slot(LINE, instr.probe, index)))
        for kind, line, _ in marked_before:
            instr.before.append((kind, line, key_slot(kind, line, -1)))
        for kind, line, _ in marked_after:
            instr.after.append((kind, line, key_slot(kind, line, -1)))
        instr.ext = _ext_units(instr.arg)
    # Probe: PUSH_NULL, LOAD_CONST hit, LOAD_CONST key, PRECALL 1 (+cache), CALL 1 (+caches),
    # POP_TOP.
    precall, call = _OP["PRECALL"], _OP["CALL"]
    # PUSH_NULL, the two LOAD_CONSTs (without their EXTENDED_ARGs), PRECALL, CALL, POP_TOP.
    fixed_units = 1 + 2 + (1 + _CACHES[precall]) + (1 + _CACHES[call]) + 1

    def probe_units(key_arg: int) -> int:
        return fixed_units + _ext_units(hit_arg) + _ext_units(key_arg)
    units = len(code.co_code) // 2
    total = 0

    def new_position(old_unit: int) -> int:
        """Where the instruction at ``old_unit`` (its probe first) starts in the new code."""
        if old_unit >= units:
            return total
        return instrs[unit_to_index[old_unit]].new_start

    # Lay out, growing EXTENDED_ARG prefixes of jumps until every argument fits.
    while True:
        position = 0
        for instr in instrs:
            instr.new_start = position
            for _, _, slot in instr.before:
                position += probe_units(slot)
            position += instr.ext
            instr.new_op = position
            position += 1 + instr.caches
            for _, _, slot in instr.after:
                position += probe_units(slot)
        total = position

        grown = False
        for unit, instr in zip(ops, instrs):
            if instr.op in _JREL:
                target = new_position(_jump_target(instr, unit))
                after = instr.new_op + 1
                arg = after - target if instr.op in _BACKWARD else target - after
                if arg < 0:
                    raise ValueError(f"jump direction changed at unit {unit}")
                need = _ext_units(arg)
                if need > instr.ext:
                    instr.ext = need
                    grown = True
                instr.new_arg = arg
        if not grown:
            break
    old_positions = list(code.co_positions())
    out = bytearray()
    positions: list[Any] = []

    def emit(op: int, arg: int, ext: int, caches: int, where: Any) -> None:
        for shift in range(ext, 0, -1):
            out.extend((_EXTENDED_ARG, (arg >> (8 * shift)) & 0xFF))
            positions.append(where)
        out.extend((op, arg & 0xFF))
        positions.append(where)
        for _ in range(caches):
            out.extend((0, 0))
            positions.append(where)

    def emit_probe(key_arg: int, where: Any) -> None:
        head = len(out) // 2
        emit(_OP["PUSH_NULL"], 0, 0, 0, where)
        emit(_OP["LOAD_CONST"], hit_arg, _ext_units(hit_arg), 0, where)
        emit(_OP["LOAD_CONST"], key_arg, _ext_units(key_arg), 0, where)
        emit(precall, 1, 0, _CACHES[precall], where)
        emit(call, 1, 0, _CACHES[call], where)
        emit(_OP["POP_TOP"], 0, 0, 0, where)
        probe = probes[consts[key_arg]]
        probe.unit = head
        skip = len(out) // 2 - head - 1
        probe.jump = bytes((_OP["JUMP_FORWARD"], skip))

    for i, (unit, instr) in enumerate(zip(ops, instrs)):
        where = old_positions[unit]
        for _, _, slot in instr.before:
            emit_probe(slot, where)
        emit(instr.op, instr.new_arg, instr.ext, instr.caches, where)
        for kind, _, slot in instr.after:
            # A frame's first instruction after its RESUME is always a line event for a
            # tracer: the ENTRY probe takes that instruction's position.
            position_after = where
            if kind == ENTRY and i + 1 < len(ops):
                position_after = old_positions[ops[i + 1]]
            emit_probe(slot, position_after)
    assert len(out) // 2 == total
    exceptions = bytearray()
    for first, end, target, dl in table:
        new_start, new_end = new_position(first), new_position(end)
        _exception_varint(new_start, exceptions, True)
        _exception_varint(new_end - new_start, exceptions, False)
        _exception_varint(new_position(target), exceptions, False)
        _exception_varint(dl, exceptions, False)
    probed = code.replace(
        co_code=bytes(out),
        co_consts=tuple(consts),
        co_stacksize=code.co_stacksize + _PROBE_STACK,
        co_linetable=_location_table(positions, code.co_firstlineno),
        co_exceptiontable=bytes(exceptions),
    )
    for key in keys:
        probes[key].code = probed
    done(probed, code)
    return probed


def exact_probes(
    instrs: list[_Instr], ops: list[int], unit_to_index: dict[int, int], resume: int
) -> None:
    """Mark where the exact-mode probes go (``before`` / ``after`` of the instructions)."""
    for index, (unit, instr) in enumerate(zip(ops, instrs)):
        line = instr.line if instr.line is not None and instr.line > 0 else 0
        if instr.op == _RESUME:
            if index == resume:
                instr.after.append((ENTRY, line, 0))
            elif instr.arg == 1:
                # after a plain yield (RESUME checks for signals there itself); not after an
                # await's or yield from's RESUME, where a call would take a pending signal
                # that the interpreter leaves to the generator being awaited
                instr.after.append((RESUME, line, 0))
        elif instr.op == _RETURN_VALUE:
            instr.before.append((EXIT, line, 0))
        elif instr.op in _BACK_EVENT and line:
            target = unit_to_index.get(_jump_target(instr, unit))
            if target is not None and instrs[target].line == instr.line:
                instr.before.append((BACK, line, 0))


#: Every probed code object of the process -> (a weak reference to it, its original), so
#: that code probed by an earlier :class:`Probes` (a core that was shut down) is probed again
#: from its original, not layered.
_ORIGINALS: dict[int, tuple[weakref.ref[CodeType], CodeType]] = {}


def _remember(probed: CodeType, original: CodeType) -> None:
    key = id(probed)

    def forget(_: object) -> None:
        entry = _ORIGINALS.get(key)
        if entry is not None and entry[0]() is None:
            _ORIGINALS.pop(key, None)

    _ORIGINALS[key] = (weakref.ref(probed, forget), original)


def original_of(code: CodeType) -> CodeType:
    """The code ``code`` was probed from (``code`` itself when it is not probed)."""
    entry = _ORIGINALS.get(id(code))
    if entry is not None and entry[0]() is code:
        return entry[1]
    return code


class Probes:
    """The census probes of one process: which code is probed, and which probes are armed.

    ``record(filename, line)`` is called on each probe's first hit (per epoch) and returns
    whether the probe may be disarmed (False: keep it, e.g. while an exact scope runs).
    ``set_unit`` is the C extension's writer of one code unit; ``quiet`` its ``Quiet``.

    A probe that has fired costs a jump per line. :meth:`compact` takes even that away: the
    functions whose code has fired probes get a variant of the original with only the probes
    still armed (or the original itself, once all fired), until the next epoch puts the fully
    probed code back (:meth:`rearm`).
    """

    def __init__(
        self,
        classify: Callable[[str], Optional[str]],
        record: Callable[[str, int], bool],
        set_unit: Callable[[CodeType, int, bytes], None],
        quiet: Optional[Callable[[Callable[[int], None]], Callable[[int], None]]] = None,
        exact: Optional[Callable[[list[Any], Optional[Callable[[int], None]]], Any]] = None,
        set_units: Optional[Callable[[list[Any], Optional[bytes]], None]] = None,
    ) -> None:
        self._classify = classify
        self._set_unit = set_unit
        self._set_units = set_units
        self._lock = threading.RLock()
        #: key -> probe (the key is the constant the probe passes to ``hit``).
        self.probes: dict[int, Probe] = {}
        self._next_key = 0
        #: id(original code) -> (original code, its probed copy).
        self._probed: dict[int, tuple[CodeType, CodeType]] = {}
        #: ids of probed code objects, variants included (never probed twice).
        self._probed_ids: set[int] = set()
        #: This epoch's variants: id(code) -> (code, its variant); id(variant) -> (variant,
        #: the fully probed code it stands in for); keys of the variants' probes; originals put
        #: into functions because all their probes fired: id -> (original, fully probed code).
        self._variants: dict[int, tuple[CodeType, CodeType]] = {}
        self._full: dict[int, tuple[CodeType, CodeType]] = {}
        self._variant_keys: list[int] = []
        self._quiet: dict[int, tuple[CodeType, CodeType]] = {}
        #: Census on: LINE probes that did not fire in this epoch are armed.
        self.enabled = False
        #: Code under the roots is probed (live functions, and modules as they load).
        self.probing = False
        #: Exact scopes that keep every probe armed (see :meth:`arm_exact_for`); once any did,
        #: census no longer compacts (exact scopes need every probe in place).
        self.exact_armed = 0
        self.exact_used = False
        self.exact = exact is not None and set_units is not None
        #: Told of every module's code as it loads (see :meth:`_loaded`).
        self._listening = False
        #: key -> (kind, co_filename, line, co_firstlineno, generator-like), for ExactProbes.
        self.table: list[Any] = []
        #: (code, unit, jump) of every probe in fully probed code: what arm_exact_for arms.
        self._heads: list[tuple[CodeType, int, bytes]] = []
        #: ids of modules whose namespaces :meth:`probe_namespaces` looked at.
        self._scanned: set[int] = set()
        self.failed = 0  # code objects left unprobed because probing failed

        probes = self.probes
        record_line = record
        unit_writer = set_unit
        state = self

        def hit(key: int) -> None:
            try:
                probe = probes[key]
                if not probe.armed:
                    return
                if record_line(probe.filename, probe.line):
                    probe.armed = False
                    if not state.exact_armed:
                        unit_writer(probe.code, probe.unit, probe.jump)  # type: ignore[arg-type]
            except Exception:
                pass

        #: What the probes call: ``hit`` behind ``quiet`` (the C extension's ``Quiet``, which
        #: suspends tracing and profiling around it, so that the application's tracers and
        #: profilers never see a probe fire); with exact scopes, the C extension's
        #: ``ExactProbes``, which records exact scopes' arcs and hands LINE probes outside
        #: them to that.
        census_hit: Callable[[int], None] = quiet(hit) if quiet is not None else hit
        self._census_hit = census_hit
        self.hit: Callable[[int], None] = census_hit
        if exact is not None and self.exact:
            # ExactProbes calls the census only while census is on (see enable / disable).
            self.hit = exact(self.table, None)

    def _new_probe(self, code: CodeType, line: int, kind: int = LINE, handler: bool = False) -> int:
        key = self._next_key
        self._next_key += 1
        self.probes[key] = Probe(code.co_filename, line, kind)
        # 1: generator-like code; 2: its LINE probe at an exception handler (where throw()
        # resumes a generator without a RESUME)
        generator = 0 if not code.co_flags & GENERATOR_FLAGS else 2 if handler else 1
        self.table.append((kind, code.co_filename, line, code.co_firstlineno, generator))
        return key

    def _settle(self, keys: range, full: bool) -> None:
        """Set the heads of new probes to what the state asks (armed for exact scopes, LINE
        probes for census), and keep the heads of fully probed code for :meth:`arm_exact_for`."""
        for key in keys:
            probe = self.probes.get(key)
            if probe is None or probe.code is None:
                continue
            if full:
                self._heads.append((probe.code, probe.unit, probe.jump))
            census = probe.kind == LINE and self.enabled
            probe.armed = census
            if not census and not self.exact_armed:
                self._set_unit(probe.code, probe.unit, probe.jump)

    def _done(self, probed: CodeType, original: CodeType) -> None:
        self._probed_ids.add(id(probed))
        _remember(probed, original)

    def _wanted(self, code: CodeType) -> bool:
        return id(code) not in self._probed_ids and self._classify(code.co_filename) is not None

    def probed(self, code: CodeType) -> CodeType:
        """The probed copy of ``code`` (``code`` itself when it is not under the roots, already
        probed, or cannot be probed)."""
        if id(code) in self._probed_ids or id(code) in self._quiet:
            return code
        code = original_of(code)
        if not self._wanted(code):
            return code
        with self._lock:
            done = self._probed.get(id(code))
            if done is not None and done[0] is code:
                return done[1]
            mark = self._next_key
            try:
                new = instrument(
                    code, self.hit, self._new_probe, self.probes, self._wanted, self._done
                )
            except Exception:
                for key in range(mark, self._next_key):
                    self.probes.pop(key, None)
                self.failed += 1
                log.debug("runcov: could not probe %s", code.co_name, exc_info=True)
                return code
            self._settle(range(mark, self._next_key), True)
            self._probed[id(code)] = (code, new)
            return new

    def _swap(self, replace: Callable[[CodeType], Optional[CodeType]]) -> int:
        """Give every live function the code ``replace(its code)`` names (None: keep it); how
        many changed."""
        changed = 0
        for obj in gc.get_objects():
            if type(obj) is not FunctionType:
                continue
            try:
                code = obj.__code__
                new = replace(code)
                if new is not None and new is not code:
                    obj.__code__ = new
                    changed += 1
            except Exception:
                continue
        return changed

    def _loaded(self, code: CodeType) -> Optional[CodeType]:
        """A module's code as a loader loads it: the module runs the probed copy (the bytecode
        cache keeps the code as compiled)."""
        return self.probed(code) if self.probing else None

    def probe_namespaces(self) -> int:
        """Put probed code into the functions (and methods of classes) that modules under the
        roots hold, in modules not looked at yet (``__main__`` each time: a script fills its
        namespace as it runs); how many changed. Finds the functions of modules made without
        the import system since probing started, at a fraction of :meth:`probe_functions`."""
        changed = 0
        for _, namespace in new_namespaces(self._scanned, self._classify):
            try:
                for value in list(namespace.values()):
                    if isinstance(value, type) and value.__module__ == namespace.get("__name__"):
                        for attr in list(value.__dict__.values()):
                            changed += self._probe_function(attr)
                    else:
                        changed += self._probe_function(value)
            except Exception:
                continue
        return changed

    def _probe_function(self, value: Any) -> int:
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        elif isinstance(value, property):
            return sum(self._probe_function(fn) for fn in (value.fget, value.fset, value.fdel))
        if type(value) is not FunctionType:
            return 0
        code = value.__code__
        new = self.probed(code)
        if new is code:
            return 0
        value.__code__ = new
        return 1

    def probe_functions(self) -> int:
        """Put probed code into every live function under the roots; how many changed."""
        return self._swap(self.probed)

    def compact(self) -> int:
        """Give every live function whose probed code has fired probes the variant of its code
        that keeps only the probes still armed (the original, once none is); how many changed.
        Not once exact scopes used the probes: they need every probe in place.
        """
        with self._lock:
            if self.exact_used:
                return 0
            by_code: dict[int, list[Probe]] = {}
            for probe in self.probes.values():
                if probe.code is not None and probe.kind == LINE:
                    by_code.setdefault(id(probe.code), []).append(probe)

            def compacted(code: CodeType) -> Optional[CodeType]:
                if id(code) not in self._probed_ids:
                    return None
                return self._variant(code, by_code)

            return self._swap(compacted)

    def _variant(self, code: CodeType, by_code: dict[int, list[Probe]]) -> Optional[CodeType]:
        """The variant of ``code`` without its fired probes, nested code objects (a
        comprehension's, a lambda's, an inner function's: made from ``code``'s constants at
        each run) compacted alike; None when nothing in it fired, or it failed. ``by_code``:
        the LINE probes of each probed code object, by id."""
        known = self._variants.get(id(code))
        if known is not None and known[0] is code:
            return known[1]
        mine = by_code.get(id(code), [])
        armed = {probe.index for probe in mine if probe.armed}
        nested = tuple(
            (self._variant(const, by_code) or const)
            if isinstance(const, CodeType) and id(const) in self._probed_ids
            else const
            for const in code.co_consts
        )
        nested_changed = any(new is not old for new, old in zip(nested, code.co_consts))
        if len(armed) == len(mine) and not nested_changed:
            return None
        original = original_of(code)
        if original is code:
            return None
        entry = self._full.get(id(code))
        full = entry[1] if entry is not None and entry[0] is code else code
        holds_probed = any(
            isinstance(const, CodeType) and id(const) in self._probed_ids for const in nested
        )
        if not armed and not holds_probed:
            variant = original
            self._quiet[id(original)] = (original, full)
        else:  # (with no probe left but nested code: functions it makes stay probed)
            mark = self._next_key
            try:
                variant = instrument(
                    original,
                    self.hit,
                    self._new_probe,
                    self.probes,
                    self._wanted,
                    self._done,
                    keep=armed.__contains__,
                    nested=nested,
                )
            except Exception:
                for key in range(mark, self._next_key):
                    self.probes.pop(key, None)
                log.debug("runcov: could not compact %s", code.co_name, exc_info=True)
                return None
            self._settle(range(mark, self._next_key), False)
            self._variant_keys.extend(range(mark, self._next_key))
            self._full[id(variant)] = (variant, full)
        self._variants[id(code)] = (code, variant)
        return variant

    def enable(self) -> None:
        """Census on: probe the code under the roots (live functions now, modules as they are
        imported) and arm the LINE probes."""
        with self._lock:
            if not self.enabled:
                self.enabled = True
                if self.exact:
                    self.hit.census = self._census_hit  # type: ignore[attr-defined]
                self.rearm()
        self.start_probing()

    def start_probing(self) -> None:
        """Probe the code under the roots: live functions now, modules as they are imported."""
        with self._lock:
            self.probing = True
            if not self._listening:
                self._listening = True
                listen_to_imports(self._loaded)
        self._scanned.clear()
        self.probe_functions()
        self._scanned.update(
            id(module)
            for module in list(sys.modules.values())
            if getattr(module, "__name__", None) != "__main__"
        )

    def disable(self) -> None:
        """Census off: disarm the census probes; stop probing imports unless exact scopes use
        the probes (probed code stays, costing a jump per line)."""
        with self._lock:
            self.enabled = False
            if self.exact:
                self.hit.census = None  # type: ignore[attr-defined]
            else:
                self.probing = False
                self._listening = False
                stop_listening(self._loaded)
            for probe in self.probes.values():
                if probe.armed:
                    probe.armed = False
                    if probe.code is not None and not self.exact_armed:
                        self._set_unit(probe.code, probe.unit, probe.jump)

    def stop(self) -> None:
        """Disarm every probe and stop probing imports (the core shuts down)."""
        with self._lock:
            self.exact = False
            self.disable()
            self.exact_armed = 0
            if self._set_units is not None:
                self._set_units(self._heads, None)

    def arm_exact_for(self, scope: Any) -> bool:
        """One more activation of the exact ``scope`` (counted in its ``holds``): every probe
        records while any is held. Nothing for a closed scope (it expired: its work records
        nothing)."""
        with self._lock:
            if scope.closed:
                return False
            scope.holds += 1
            self.exact_armed += 1
            if self.exact_armed == 1:
                self._arm_all()
            return True

    def _arm_all(self) -> None:
        if not self.exact_used:
            self.exact_used = True
            if self._variants:
                self._uncompact()
        self._set_units(self._heads, _ARMED_HEAD)  # type: ignore[misc]

    def disarm_exact_for(self, scope: Any, every: bool = False) -> None:
        """:meth:`disarm_exact` for one activation of ``scope`` (``every``: for all it holds,
        when it expires); nothing for a scope that holds none any more."""
        with self._lock:
            held = scope.holds if every else min(1, scope.holds)
            if held:
                scope.holds -= held
                self._disarm(held)

    def disarm_exact(self) -> None:
        """An exact scope closes: the last one puts the jumps back (census probes that did not
        fire stay armed)."""
        with self._lock:
            self._disarm(1)

    def _disarm(self, count: int) -> None:
        if self.exact_armed <= 0:
            return
        self.exact_armed = max(0, self.exact_armed - count)
        if self.exact_armed:
            return
        self._set_units(self._heads, None)  # type: ignore[misc]
        if self.enabled:
            for probe in self.probes.values():
                if probe.armed and probe.code is not None:
                    self._set_unit(probe.code, probe.unit, _ARMED_HEAD)

    def after_fork_in_child(self) -> None:
        """A forked child keeps the probes and their state (its own copy); only the lock, which
        another thread of the parent may have held, is new. The parent's exact scopes do not
        run in the child: their probes are disarmed."""
        self._lock = threading.RLock()
        if self.exact_armed:
            self.exact_armed = 1
            self.disarm_exact()

    def restore(self) -> int:
        """Put the original code back into every live function this holds probed; how many."""
        return self._swap(
            lambda code: original_of(code) if id(code) in self._probed_ids else None
        )

    def rearm(self) -> None:
        """Arm every probe again (a new census epoch): functions given a variant get their
        fully probed code back."""
        with self._lock:
            if self._variants:
                self._uncompact()
            for probe in self.probes.values():
                if not probe.armed and probe.code is not None and probe.kind == LINE:
                    self._set_unit(probe.code, probe.unit, _ARMED_HEAD)
                    probe.armed = True

    def _uncompact(self) -> None:
        full_of = dict(self._full)
        full_of.update(self._quiet)

        def full(code: CodeType) -> Optional[CodeType]:
            entry = full_of.get(id(code))
            return entry[1] if entry is not None and entry[0] is code else None

        self._swap(full)
        # A frame still running a variant keeps it; its probes, gone from the table, no
        # longer record.
        for key in self._variant_keys:
            self.probes.pop(key, None)
        for variant, _ in self._full.values():
            self._probed_ids.discard(id(variant))
        self._variant_keys.clear()
        self._variants.clear()
        self._full.clear()
        self._quiet.clear()
