"""numpy and torch memory as the encoder sees it: which array owns the memory a value views,
which arrays of a component its other arrays (and tensors) are restored over, the keys that
make names sharing memory one co-variable, and pandas string columns as one UTF-8 buffer.
Nothing here is named by a stored pickle: the functions that rebuild values are in encode.
"""

from __future__ import annotations

import ctypes
import operator
import sys
from typing import Any

import xxhash

#: numpy object arrays of this many elements or more that hold only str (pandas string
#: columns without pyarrow) are encoded as one UTF-8 buffer, not element by element.
STRING_ARRAY_MIN = 10_000
_STRING_CACHE_BYTES = 512 << 20
_string_cache: dict[tuple[str, tuple[int, ...]], tuple[Any, bytes]] = {}


def string_array_data(arr: Any) -> bytes | None:
    """The strings of a C-contiguous object array joined by NUL as UTF-8, or None if it holds
    anything but str (or a str containing NUL).

    Cached by the array's pointers: the cache holds the list of the strings, so they stay
    alive and no other object can take their addresses; equal pointers then mean
    the very same immutable strings, and a column that did not change costs one hash (~5 ms
    for 3M rows) instead of an encode.
    """
    if arr.size < STRING_ARRAY_MIN or not arr.flags.c_contiguous:
        return None
    pointers = (ctypes.c_ssize_t * arr.size).from_address(arr.ctypes.data)
    key = (xxhash.xxh3_128_hexdigest(memoryview(pointers).cast("B")), arr.shape)
    hit = _string_cache.get(key)
    if hit is not None:
        return hit[1]
    np = sys.modules["numpy"]  # arr is an ndarray: numpy is loaded
    items = arr.ravel().tolist()
    if operator.countOf(map(type, items), str) != len(items):  # exactly str, no subclass
        return None
    data = "\x00".join(items).encode("utf-8", "surrogatepass")
    # UTF-8 has a zero byte only for NUL: a string holding one would not split back the same
    if len(items) - 1 != int(np.count_nonzero(np.frombuffer(data, dtype=np.uint8) == 0)):
        return None
    while _string_cache and sum(len(d) for _, d in _string_cache.values()) + len(data) > \
            _STRING_CACHE_BYTES:
        del _string_cache[next(iter(_string_cache))]
    _string_cache[key] = (items, data)
    return data


def owner_array(np: Any, array: Any) -> Any:
    """The ndarray at the end of array's chain of bases: the one whose memory it views."""
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


def view_roots(top: Any) -> dict[int, Any]:
    """Arrays whose views, in a component being pickled, are stored as views of them: those
    that are themselves one of its values, or whose memory two of its values view. Any other
    view is stored as a copy of what it shows (storing a whole base nobody named could cost
    far more than the view)."""
    np = sys.modules.get("numpy")
    values = top if type(top) is tuple else (top,)
    if np is None or len(values) < 2:
        return {}
    owners: dict[int, Any] = {}
    roots: dict[int, Any] = {}
    for v in values:
        if type(v) is np.ndarray:
            owner = owner_array(np, v)
            if owner is v or id(owner) in owners:
                roots[id(owner)] = owner
            owners[id(owner)] = owner
    return roots


#: numpy kinds stored as views of (or as owners for) their component's arrays: bool, numbers
NUMERIC = frozenset("biufc")


def arrays_at(top: Any) -> dict[int, Any]:
    """{address: array} of the C-contiguous numeric arrays owning memory among a component's
    values: a tensor over the same memory (torch.from_numpy) is restored over the array."""
    np = sys.modules.get("numpy")
    values = top if type(top) is tuple else (top,)
    if np is None or len(values) < 2:
        return {}
    found = {}
    for v in values:
        if type(v) is np.ndarray:
            owner = owner_array(np, v)
            if owner.flags.c_contiguous and owner.dtype.kind in NUMERIC:
                found[owner.__array_interface__["data"][0]] = owner
    return found


def memory_roots(np: Any, array: Any) -> tuple[int, ...]:
    """Keys of the memory an ndarray lives in, so that names whose arrays share memory (views
    of one base, np.frombuffer of one buffer, torch.from_numpy) are one co-variable: a change
    through one is a change of the other. The id of the object owning the memory (an id, like
    the shared objects'), and for memory numpy allocated, minus its address (a torch storage's
    key: a tensor made by from_numpy shares it)."""
    root = owner_array(np, array)
    owner = root.base
    while isinstance(owner, memoryview):  # np.frombuffer: a fresh view of the buffer each time
        owner = owner.obj
    if owner is not None:  # memory numpy did not allocate (a bytearray, an mmap, a tensor...)
        return (id(owner),)
    return (id(root), -root.__array_interface__["data"][0])
