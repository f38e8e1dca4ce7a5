"""Run a command under the seccomp part of the streamrec units' sandbox, as systemd 252 builds it,
without systemd: `SystemCallFilter=@system-service ~@privileged` (`SystemCallErrorNumber=EPERM`),
`MemoryDenyWriteExecute=yes` and `RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX`.

    python3 infra/deploy/sandbox_run.py .venv/bin/pytest tests/learners/test_models.py

It needs libseccomp's Python module (Debian: `apt-get install python3-seccomp`, built for the
system Python; a venv of the same minor version can load it) and checks that the stack runs with
the filters before they go into the units (docs/operations.md, "systemd")."""

from __future__ import annotations

import errno
import importlib.util
import os
import subprocess
import sys
from glob import glob
from types import ModuleType

PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000
ALLOWED_FAMILIES = {1, 2, 10}  # AF_UNIX, AF_INET, AF_INET6


def _seccomp() -> ModuleType:
    try:
        import seccomp

        return seccomp
    except ImportError:
        tag = f"cpython-{sys.version_info.major}{sys.version_info.minor}"
        found = glob(f"/usr/lib/python3/dist-packages/seccomp.{tag}-*.so")
        if not found:
            sys.exit("error: no libseccomp Python module: apt-get install python3-seccomp")
        spec = importlib.util.spec_from_file_location("seccomp", found[0])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


def syscall_group(name: str) -> set[str]:
    """The system calls of a `SystemCallFilter=` group, nested groups expanded."""
    out = subprocess.run(
        ["systemd-analyze", "syscall-filter", name], capture_output=True, text=True, check=True
    ).stdout
    names: set[str] = set()
    for line in out.splitlines()[1:]:
        entry = line.strip()
        if entry and not entry.startswith("#"):
            names |= syscall_group(entry) if entry.startswith("@") else {entry}
    return names


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit(__doc__)
    sc = _seccomp()
    mdwe = sc.SyscallFilter(defaction=sc.ALLOW)
    wx = PROT_WRITE | PROT_EXEC
    mdwe.add_rule(sc.ERRNO(errno.EPERM), "mmap", sc.Arg(2, sc.MASKED_EQ, wx, wx))
    for call in ("mprotect", "pkey_mprotect"):
        mdwe.add_rule(sc.ERRNO(errno.EPERM), call, sc.Arg(2, sc.MASKED_EQ, PROT_EXEC, PROT_EXEC))
    mdwe.add_rule(sc.ERRNO(errno.EPERM), "shmat", sc.Arg(2, sc.MASKED_EQ, SHM_EXEC, SHM_EXEC))
    families = sc.SyscallFilter(defaction=sc.ALLOW)
    for family in sorted(set(range(11)) - ALLOWED_FAMILIES):
        families.add_rule(sc.ERRNO(errno.EAFNOSUPPORT), "socket", sc.Arg(0, sc.EQ, family))
    families.add_rule(sc.ERRNO(errno.EAFNOSUPPORT), "socket", sc.Arg(0, sc.GT, 10))
    calls = sc.SyscallFilter(defaction=sc.ERRNO(errno.EPERM))
    allowed = 0
    for call in sorted(syscall_group("@system-service") - syscall_group("@privileged")):
        try:
            calls.add_rule(sc.ALLOW, call)
            allowed += 1
        except (RuntimeError, ValueError):
            pass  # unknown to this architecture or libseccomp
    for f in (mdwe, families, calls):  # the allow list last: it forbids seccomp() itself
        f.load()
    print(f"sandbox: {allowed} system calls, W^X memory, AF_UNIX/INET/INET6", file=sys.stderr)
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
