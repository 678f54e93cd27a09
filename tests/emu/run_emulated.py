"""Runs a static x86-64 Linux program on an emulated CPU with AVX-512, so that code for
instruction sets the host lacks can be tested on it.

The CPU is Bochs, through the PyPI package bochscpu-python 0.3.1, whose CPU model is an Intel Core
i5-1135G7 (Tiger Lake: AVX-512 F, CD, BW, DQ, VL, IFMA, VBMI, VBMI2, VNNI, BITALG, VPOPCNTDQ; no
AVX-VNNI, no AVX512-BF16). It is a bare CPU, so this script is the machine and the kernel:

- memory: guest physical pages are host pages, given out when the CPU first touches them; the
  page tables map virtual addresses one to one onto physical ones (2 MB pages below 4 GB), so the
  program's address space is the physical address space. A page outside the program's image,
  heap, stack and mappings is refused, as an unmapped page would be.
- the program runs in ring 3 in 64-bit mode from its ELF entry point, with the initial stack the
  Linux kernel builds (argc, argv, envp, auxiliary vector).
- system calls: SYSCALL jumps to a stub page holding one SYSRETQ. Bochs reports the SYSCALL to the
  far-branch hook, which emulates the call in Python (arguments in the registers, result in RAX)
  before the stub returns. Python runs once per system call and once per new page, never per
  instruction.
- a CPU exception (invalid opcode, page fault, ...) ends the run as the matching signal would.

Usage: run_emulated.py [--timeout SECONDS] PROGRAM [ARG...]
Exit status: the program's; 128 + the signal number when a CPU exception or a signal ends it;
125 when the program cannot be run; 1 (with Python's traceback) when the time limit is reached.
"""

import argparse
import bisect
import ctypes
import errno
import faulthandler
import os
import random
import struct
import sys
import time
import traceback

try:
    import bochscpu
    import bochscpu.cpu
    import bochscpu.memory
except ImportError as e:
    sys.exit(f"run_emulated: cannot import bochscpu ({e}); pip install bochscpu-python==0.3.1")

PAGE = 0x1000
MASK64 = (1 << 64) - 1

# Physical (= virtual) layout. Page 0 and the rest of the first 2 MB stay unmapped, except the
# system call stub (supervisor only); the page tables live there too, reachable by the CPU's page
# walks but by no virtual address.
PML4 = 0x1000
PDPT = 0x2000
PDS = 0x3000  # four page directories: 4 GB in 2 MB pages
PT0 = 0x7000  # 4 KB pages for the first 2 MB
STUB = 0x8000
LOW_RESERVED = 0x20_0000
MMAP_LO, MMAP_HI = 0x4000_0000, 0xE000_0000
STACK_TOP, STACK_SIZE = 0xF000_0000, 8 << 20
HEAP_LIMIT = MMAP_LO

# Selectors as Linux sets them: SYSCALL loads CS = STAR[47:32] and SS = CS + 8; SYSRETQ loads
# CS = STAR[63:48] + 16 and SS = STAR[63:48] + 8, both with RPL 3.
KERNEL_CS, USER_BASE = 0x10, 0x23
USER_CS, USER_SS = 0x33, 0x2B
# Segment attributes in Bochs' VMX layout: type | S << 4 | DPL << 5 | P << 7 | L << 13 | DB << 14
# | G << 15.
USER_CODE_ATTR = 0xB | 0x10 | 0x60 | 0x80 | 0x2000 | 0x8000
USER_DATA_ATTR = 0x3 | 0x10 | 0x60 | 0x80 | 0x4000 | 0x8000

CR4_PAE, CR4_OSFXSR, CR4_OSXMMEXCPT, CR4_OSXSAVE = 1 << 5, 1 << 9, 1 << 10, 1 << 18
XCR0_AVX512 = 0xE7  # x87, SSE, AVX, opmask, ZMM0-15 upper halves, ZMM16-31

# CPU exception vector -> the signal Linux sends for it (SIGFPE, SIGILL, SIGSEGV, SIGBUS).
SIGNALS = {0: 8, 6: 4, 12: 11, 13: 11, 14: 11, 16: 8, 17: 7, 19: 8}
EXCEPTION_NAMES = {0: "#DE divide error", 6: "#UD invalid opcode", 12: "#SS stack fault",
                   13: "#GP general protection", 14: "#PF page fault", 16: "#MF x87 floating-point",
                   17: "#AC alignment check", 19: "#XM SIMD floating-point"}

PT_LOAD, PT_INTERP = 1, 3
AT = {"PHDR": 3, "PHENT": 4, "PHNUM": 5, "PAGESZ": 6, "ENTRY": 9, "UID": 11,
      "EUID": 12, "GID": 13, "EGID": 14, "PLATFORM": 15, "CLKTCK": 17, "SECURE": 23,
      "RANDOM": 25, "EXECFN": 31}


def page_down(a):
    return a & ~(PAGE - 1)


def page_up(a):
    return (a + PAGE - 1) & ~(PAGE - 1)


class Fault(Exception):
    """The program did something a process may not; the run ends with `signal`."""

    def __init__(self, message, signal):
        super().__init__(message)
        self.signal = signal


class BadAddress(Exception):
    """A system call was given memory the program does not have: it fails with EFAULT."""


class Memory:
    """Guest physical memory: host pages, given out on first touch of a page that is allowed."""

    def __init__(self):
        self.pages = {}
        self.allowed = lambda addr: True  # until the program's address space is set up

    def back(self, page):
        hva = self.pages.get(page)
        if hva is None:
            hva = bochscpu.memory.allocate_host_page()
            if not hva:
                raise MemoryError("no host page left")
            bochscpu.memory.page_insert(page, hva)
            self.pages[page] = hva
        return hva

    def _spans(self, addr, n):
        while n > 0:
            off = addr & (PAGE - 1)
            k = min(n, PAGE - off)
            yield addr, off, k
            addr += k
            n -= k

    def _hva(self, addr):
        if not self.allowed(addr):
            raise BadAddress(addr)
        return self.back(page_down(addr))

    def write(self, addr, data):
        data = bytes(data)
        done = 0
        for a, off, k in self._spans(addr, len(data)):
            ctypes.memmove(self._hva(a) + off, data[done:done + k], k)
            done += k

    def read(self, addr, n):
        spans = self._spans(addr, n)
        return b"".join(ctypes.string_at(self._hva(a) + off, k) for a, off, k in spans)

    def read_cstr(self, addr, limit=4096):
        out = b""
        while len(out) < limit:
            chunk = self.read(addr + len(out), PAGE - ((addr + len(out)) & (PAGE - 1)))
            end = chunk.find(b"\0")
            if end >= 0:
                return out + chunk[:end]
            out += chunk
        return out

    def zero(self, lo, hi):
        """Clears the pages of [lo, hi) that are backed (fresh pages are zero already)."""
        for page in range(page_down(lo), page_up(hi), PAGE):
            if page in self.pages:
                a, b = max(lo, page), min(hi, page + PAGE)
                ctypes.memset(self.pages[page] + (a - page), 0, b - a)


class Elf:
    """The loadable parts of a static x86-64 ELF executable and its function symbols."""

    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            self.image = f.read()
        ident = self.image[:16]
        if ident[:4] != b"\x7fELF" or ident[4] != 2 or ident[5] != 1:
            raise ValueError(f"{path}: not a little-endian 64-bit ELF file")
        (self.type, machine, _, self.entry, phoff, shoff, _, _, phentsize, phnum, shentsize,
         shnum, _) = struct.unpack_from("<HHIQQQIHHHHHH", self.image, 16)
        if machine != 62 or self.type not in (2, 3):
            raise ValueError(f"{path}: not an x86-64 executable")
        self.phoff, self.phentsize, self.phnum = phoff, phentsize, phnum
        self.phdrs = [struct.unpack_from("<IIQQQQQQ", self.image, phoff + i * phentsize)
                      for i in range(phnum)]
        if any(p[0] == PT_INTERP for p in self.phdrs):
            raise ValueError(f"{path}: dynamically linked; link it with -static")
        # Position-independent static executables relocate themselves wherever they are put.
        self.base = 0x40_0000 if self.type == 3 else 0
        self.symbols = self._functions(shoff, shentsize, shnum)

    def loads(self):
        for ptype, _, offset, vaddr, _, filesz, memsz, _ in self.phdrs:
            if ptype == PT_LOAD:
                yield self.base + vaddr, self.image[offset:offset + filesz], memsz

    def phdr_address(self):
        for ptype, _, offset, vaddr, _, filesz, _, _ in self.phdrs:
            if ptype == PT_LOAD and offset <= self.phoff < offset + filesz:
                return self.base + vaddr + self.phoff - offset
        raise ValueError("program headers are not in a loaded segment")

    def _functions(self, shoff, shentsize, shnum):
        sections = [struct.unpack_from("<IIQQQQIIQQ", self.image, shoff + i * shentsize)
                    for i in range(shnum)] if shoff else []
        out = []
        for _, stype, _, _, offset, size, link, _, _, entsize in sections:
            if stype != 2:  # SHT_SYMTAB
                continue
            strtab = sections[link][4]
            for i in range(size // entsize):
                name, info, _, _, value, sym_size = struct.unpack_from(
                    "<IBBHQQ", self.image, offset + i * entsize)
                if info & 0xF == 2 and value:  # STT_FUNC
                    end = self.image.index(b"\0", strtab + name)
                    out.append((self.base + value, sym_size,
                                self.image[strtab + name:end].decode(errors="replace")))
        out.sort()
        return out

    def symbolize(self, addr):
        i = bisect.bisect_right(self.symbols, (addr, float("inf"))) - 1
        if i >= 0:
            start, size, name = self.symbols[i]
            if addr < start + max(size, 1):
                return f"{name}+{addr - start:#x}"
        return "?"


class Process:
    """The program's address space and the system calls it makes."""

    def __init__(self, elf, argv, mem, session):
        self.elf, self.mem, self.session = elf, mem, session
        self.segments = []  # [lo, hi) of the loaded image
        self.maps = []  # sorted [lo, hi) of anonymous mappings
        self.exit_status = None
        self.rng = random.Random(0)  # getrandom and AT_RANDOM: runs are reproducible
        self.unsupported = set()
        for vaddr, data, memsz in elf.loads():
            lo, hi = page_down(vaddr), page_up(vaddr + memsz)
            if lo < LOW_RESERVED or hi > HEAP_LIMIT:
                raise ValueError(f"{elf.path}: a segment at {vaddr:#x} is outside "
                                 f"[{LOW_RESERVED:#x}, {HEAP_LIMIT:#x})")
            self.segments.append((lo, hi))
            mem.write(vaddr, data)
        self.brk_start = self.brk = max(hi for _, hi in self.segments)
        mem.allowed = self.allowed
        self.rsp = self._initial_stack(argv)

    def allowed(self, addr):
        if self.brk_start <= addr < self.brk or STACK_TOP - STACK_SIZE <= addr < STACK_TOP:
            return True
        if any(lo <= addr < hi for lo, hi in self.segments):
            return True
        i = bisect.bisect_right(self.maps, (addr, MASK64)) - 1
        return i >= 0 and self.maps[i][0] <= addr < self.maps[i][1]

    def _initial_stack(self, argv):
        """argc, argv, envp (empty) and the auxiliary vector, as execve leaves them."""
        sp = STACK_TOP
        strings = {}
        for s in argv + ["x86_64"]:
            data = s.encode() + b"\0"
            sp -= len(data)
            self.mem.write(sp, data)
            strings[s] = sp
        sp -= 16
        random_bytes = sp
        self.mem.write(sp, self.rng.randbytes(16))
        auxv = [(AT["PHDR"], self.elf.phdr_address()), (AT["PHENT"], self.elf.phentsize),
                (AT["PHNUM"], self.elf.phnum), (AT["PAGESZ"], PAGE),
                (AT["ENTRY"], self.elf.base + self.elf.entry), (AT["UID"], 0), (AT["EUID"], 0),
                (AT["GID"], 0), (AT["EGID"], 0), (AT["SECURE"], 0), (AT["CLKTCK"], 100),
                (AT["RANDOM"], random_bytes), (AT["PLATFORM"], strings["x86_64"]),
                (AT["EXECFN"], strings[argv[0]]), (0, 0)]
        # x86-64 glibc takes the CPU's features from CPUID, not from AT_HWCAP, which is left out.
        words = [len(argv)] + [strings[s] for s in argv] + [0] + [0]
        words += [v for pair in auxv for v in pair]
        sp = (sp - 8 * len(words)) & ~0xF
        self.mem.write(sp, struct.pack(f"<{len(words)}Q", *words))
        return sp

    def _find_gap(self, length):
        lo = MMAP_LO
        for a, b in self.maps:
            if a - lo >= length:
                break
            lo = max(lo, b)
        return lo if lo + length <= MMAP_HI else None

    def _unmap(self, lo, hi):
        kept = []
        for a, b in self.maps:
            if b <= lo or a >= hi:
                kept.append((a, b))
                continue
            if a < lo:
                kept.append((a, lo))
            if b > hi:
                kept.append((hi, b))
        self.maps = kept

    # ---- system calls: arguments rdi, rsi, rdx, r10, r8, r9; the result (or -errno) in rax ----

    # The x86-64 numbers of the calls that glibc's static start-up, stdio, malloc, clocks and
    # abort() make; any other fails with ENOSYS, reported once.
    CALLS = {1: "write", 9: "mmap", 10: "mprotect", 11: "munmap", 12: "brk",
             14: "rt_sigprocmask", 16: "ioctl", 20: "writev", 39: "getpid", 89: "readlink",
             158: "arch_prctl", 186: "gettid", 218: "set_tid_address", 228: "clock_gettime",
             231: "exit_group", 234: "tgkill", 262: "newfstatat", 273: "set_robust_list",
             302: "prlimit64", 318: "getrandom", 334: "rseq"}

    def syscall(self, cpu):
        nr = cpu.rax
        name = self.CALLS.get(nr)
        if name is None:
            if nr not in self.unsupported:
                self.unsupported.add(nr)
                print(f"run_emulated: system call {nr} is not emulated (ENOSYS)", file=sys.stderr)
            return -errno.ENOSYS
        try:
            return getattr(self, "sys_" + name)(cpu.rdi, cpu.rsi, cpu.rdx, cpu.r10, cpu.r8, cpu.r9)
        except BadAddress:
            return -errno.EFAULT

    def _nothing(self, *_):
        """mprotect: all memory stays readable, writable and executable. rt_sigprocmask,
        set_robust_list: no signal is ever delivered, no second thread ever runs."""
        return 0

    sys_mprotect = sys_rt_sigprocmask = sys_set_robust_list = _nothing

    def _pid(self, *_):
        return 1000  # the process and its only thread

    sys_getpid = sys_gettid = sys_set_tid_address = _pid

    def sys_write(self, fd, buf, count, *_):
        if fd not in (1, 2):
            return -errno.EBADF
        return os.write(fd, self.mem.read(buf, count))

    def sys_writev(self, fd, iov, iovcnt, *_):
        if fd not in (1, 2):
            return -errno.EBADF
        data = b""
        for i in range(iovcnt):
            base, length = struct.unpack("<QQ", self.mem.read(iov + 16 * i, 16))
            data += self.mem.read(base, length)
        return os.write(fd, data)

    def sys_newfstatat(self, fd, path, buf, flags, *_):
        at_empty_path = 0x1000
        if not flags & at_empty_path or self.mem.read_cstr(path):
            return -errno.ENOENT
        if fd not in (0, 1, 2):
            return -errno.EBADF
        st = os.fstat(fd)  # what the host's own descriptor is, so stdio buffers alike
        self.mem.write(buf, struct.pack("<QQQIIIIQqqq48x", st.st_dev, st.st_ino, st.st_nlink,
                                        st.st_mode, 0, 0, 0, st.st_rdev, st.st_size,
                                        st.st_blksize, st.st_blocks))
        return 0

    def sys_ioctl(self, *_):
        return -errno.ENOTTY  # stdio asks whether a character device is a terminal

    def sys_readlink(self, path, buf, size, *_):
        if self.mem.read_cstr(path) != b"/proc/self/exe":
            return -errno.ENOENT
        target = os.path.abspath(self.elf.path).encode()[:size]
        self.mem.write(buf, target)
        return len(target)

    def sys_brk(self, addr, *_):
        if self.brk_start <= addr <= HEAP_LIMIT:
            if addr > self.brk:
                self.mem.zero(self.brk, addr)  # pages given back earlier come back as zeros
            self.brk = addr
        return self.brk

    def sys_mmap(self, addr, length, prot, flags, fd, offset):
        map_fixed, map_anonymous = 0x10, 0x20
        if length == 0:
            return -errno.EINVAL
        if not flags & map_anonymous or flags & map_fixed:
            return -errno.ENODEV  # only what malloc asks for is emulated
        length = page_up(length)
        lo = self._find_gap(length)
        if lo is None:
            return -errno.ENOMEM
        bisect.insort(self.maps, (lo, lo + length))
        self.mem.zero(lo, lo + length)
        return lo

    def sys_munmap(self, addr, length, *_):
        if addr & (PAGE - 1):
            return -errno.EINVAL
        self._unmap(addr, addr + page_up(length))
        return 0

    def sys_arch_prctl(self, code, addr, *_):
        arch_set_fs = 0x1002
        if code != arch_set_fs:
            return -errno.EINVAL
        cpu = self.session.cpu
        fs = cpu.fs
        fs.base = addr
        cpu.fs = fs
        return 0

    def sys_prlimit64(self, pid, resource, new, old, *_):
        rlimit_stack, infinity = 3, MASK64
        if old:
            cur = STACK_SIZE if resource == rlimit_stack else infinity
            self.mem.write(old, struct.pack("<QQ", cur, infinity))
        return 0

    def sys_getrandom(self, buf, count, *_):
        self.mem.write(buf, self.rng.randbytes(count))
        return count

    def sys_clock_gettime(self, clock, ts, *_):
        ns = time.time_ns() if clock == 0 else time.monotonic_ns()
        self.mem.write(ts, struct.pack("<qq", ns // 10**9, ns % 10**9))
        return 0

    def sys_rseq(self, *_):
        return -errno.ENOSYS  # glibc then does without restartable sequences

    def sys_tgkill(self, tgid, tid, sig, *_):
        raise Fault(f"the program sent itself signal {sig}", sig)

    def sys_exit_group(self, status, *_):
        self.exit_status = status & 0xFF
        self.session.stop()
        return 0


def build_page_tables(mem):
    """Identity map of the low 4 GB: 2 MB pages, user, writable, executable, and 4 KB pages for
    the first 2 MB, where only the system call stub is mapped (supervisor, read-only)."""
    present, writable, user, large = 1, 2, 4, 0x80
    table = present | writable | user
    mem.write(PML4, struct.pack("<Q", PDPT | table))
    mem.write(PDPT, struct.pack("<4Q", *((PDS + i * PAGE) | table for i in range(4))))
    pdes = [PT0 | table] + [(i << 21) | table | large for i in range(1, 4 * 512)]
    mem.write(PDS, struct.pack(f"<{len(pdes)}Q", *pdes))
    mem.write(PT0, bytes(PAGE))
    mem.write(PT0 + 8 * (STUB >> 12), struct.pack("<Q", STUB | present))
    mem.write(STUB, b"\x48\x0f\x07")  # sysretq


def segment(selector, attr):
    s = bochscpu.Segment()
    s.selector, s.base, s.limit, s.attr, s.present = selector, 0, 0xFFFFFFFF, attr, True
    return s


def initial_state(entry, rsp):
    st = bochscpu.State()
    bochscpu.cpu.set_long_mode(st)  # CR0.PG/PE, EFER.LME/LMA/SCE/NXE
    st.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT | CR4_OSXSAVE
    st.cr3 = PML4
    st.xcr0 = XCR0_AVX512
    st.star = (USER_BASE << 48) | (KERNEL_CS << 32)
    st.lstar = STUB
    st.sfmask = 0x4700  # TF, IF, DF, NT cleared in the stub, as Linux does
    st.cs = segment(USER_CS, USER_CODE_ATTR)
    for name in ("ss", "ds", "es", "fs", "gs"):
        setattr(st, name, segment(USER_SS, USER_DATA_ATTR))
    st.rip, st.rsp, st.rflags = entry, rsp, 0x202
    st.mxcsr, st.fpcw = 0x1F80, 0x37F
    return st


def run(path, argv):
    """Runs the program to its end; returns its exit status."""
    mem = Memory()
    build_page_tables(mem)
    session = bochscpu.Session()
    try:
        elf = Elf(path)
        proc = Process(elf, argv, mem, session)
    except (OSError, ValueError) as e:
        print(f"run_emulated: {e}", file=sys.stderr)
        return 125
    fault = []

    def stop(message, signal):
        if not fault:
            fault.append((message, signal))
        session.stop()

    def missing_page(gpa):
        if not proc.allowed(gpa):
            rip = session.cpu.rip
            stop(f"access to unmapped address {gpa:#x} near rip {rip:#x} "
                 f"({elf.symbolize(rip - 1)})", 11)
        mem.back(page_down(gpa))  # Bochs needs the page even when the run stops here

    syscall = int(bochscpu.InstructionType.IS_SYSCALL)

    def far_branch(sess, _cpu, what, _prev_cs, _prev_ip, _new_cs, _new_ip):
        if what != syscall:
            return
        try:
            sess.cpu.rax = proc.syscall(sess.cpu) & MASK64
        except Fault as e:
            stop(str(e), e.signal)
        except Exception:  # a fault of this script: report it rather than run on
            stop(f"system call {sess.cpu.rax} failed in the harness:\n{traceback.format_exc()}",
                 None)

    def exception(sess, _cpu, vector, error_code):
        name = EXCEPTION_NAMES.get(vector, f"exception {vector}")
        where = sess.cpu.rip
        detail = f" at {sess.cpu.cr2:#x}" if vector == 14 else ""
        # Bochs reports the exception with RIP already past the instruction that raised it.
        stop(f"CPU {name} (error code {error_code:#x}){detail} by the instruction ending at "
             f"{where:#x} ({elf.symbolize(where - 1)})", SIGNALS.get(vector, 11))

    hook = bochscpu.Hook()
    hook.far_branch = far_branch
    hook.exception = exception
    session.missing_page_handler = missing_page
    session.cpu.state = initial_state(elf.base + elf.entry, proc.rsp)
    session.run([hook])
    if fault:
        message, signal = fault[0]
        print(f"run_emulated: {message}", file=sys.stderr)
        return 125 if signal is None else 128 + signal
    if proc.exit_status is None:
        print("run_emulated: the CPU stopped before the program exited", file=sys.stderr)
        return 125
    return proc.exit_status


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=600,
                        help="seconds before the run is abandoned (default 600)")
    parser.add_argument("program")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    opts = parser.parse_args()
    # Bochs holds the interpreter while it runs, so the limit is kept by faulthandler's own
    # thread, which prints where Python was and exits with status 1.
    faulthandler.dump_traceback_later(opts.timeout, exit=True)
    status = run(opts.program, [opts.program] + opts.args)
    sys.stdout.flush()
    sys.stderr.flush()
    # The extension's objects do not survive interpreter shutdown cleanly: leave at once.
    os._exit(status)


if __name__ == "__main__":
    main()
