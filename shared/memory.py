"""glibc's allocator told to keep freed buffers, for a process that moves bulk streams."""

from __future__ import annotations

M_TOP_PAD, M_MMAP_THRESHOLD, SPARE = -2, -3, 16 << 20


def keep_freed_memory() -> None:
    """Have glibc's allocator keep buffers of up to 16 MiB on the heap and 16 MiB spare at its top.

    A bulk stream allocates and frees buffers the size of a message (1 MiB: the websocket library's frames and
    masked copies, TLS output) in a process whose heap is small: glibc gave the freed top of the heap back to
    the kernel again and again, and each new buffer was faulted in afresh. Measured, 512 MiB piped in: the CLI
    357,000 minor faults and 1.1 s of system time (about 6,000 with this); the processes service 48,900.
    Where there is no ``mallopt`` (macOS), nothing changes.
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mallopt(M_MMAP_THRESHOLD, SPARE)  # a buffer under 16 MiB from the heap, not mapped for itself
    mallopt(M_TOP_PAD, SPARE)
