"""Values ⇄ bytes: pickle protocol 5 with out-of-band buffers.

* Big buffers (numpy arrays, torch CPU tensors, pandas numeric columns) leave the pickle stream
  as out-of-band buffers, so they are hashed and chunked in place, never copied to pickle.
* Functions and classes defined in the user namespace are pickled by value (cloudpickle), but
  their ``__globals__`` is the namespace itself, not a copy of the globals they use: once
  restored they read and write the live namespace, like the originals.
* A value that cannot be pickled is reported (UnpicklableError), never a failed transaction.
* Notebook values that plain pickle stores but cannot load into an empty namespace are
  stored so that they load: an ``lru_cache`` function by value (not as ``__main__.sq``); a
  singleton whose ``__reduce__`` returns its name by value where it is stored, by a namespace
  lookup elsewhere (a NameError until that name is bound: the session binds it first); a
  subclass without running the notebook's ``__init_subclass__`` again; an instance of a class
  with ``__getattr__`` without asking the bare instance for ``__setstate__``.
"""

from __future__ import annotations

import functools
import io
import pickle
import sys
import threading
import types
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from . import arrays, graph
from .compat import (
    cloudpickle_class_setstate,
    cloudpickle_function_newargs,
    cloudpickle_function_setstate,
    cloudpickle_function_state,
    cloudpickle_make_skeleton_class,
    cloudpickle_skeleton_bases,
    cloudpickle_with_slots,
    cloudpickle_with_state_setter,
    copyreg_newobj,
    copyreg_slotnames,
    matplotlib_callbacks_reduce,
)
from .errors import RestoreError

_loading = threading.local()
#: Buffers smaller than this are pickled in band: each out-of-band buffer is at least one
#: chunk file (and one fsync) per change, which dominates for a model's biases and scalars.
IN_BAND_BELOW = 64 << 10
#: Pickles up to this size report shared objects from the pickler's memo (exact); bigger ones
#: from a walk of the object graph (copying a memo of millions of objects costs seconds).
MEMO_LIMIT = 1 << 20


class UnpicklableError(Exception):
    """A value could not be serialized; str(self) says why in one line."""


class _NamespaceMarker:
    """Stands for the user namespace inside a pickle; becomes the loading namespace.
    A module global, so it never joins names into one component."""

    def __reduce__(self) -> tuple[Callable[[], dict[str, Any]], tuple[()]]:
        return _loading_namespace, ()


_NAMESPACE = _NamespaceMarker()


def _loading_namespace() -> dict[str, Any]:
    return _loading.namespace


@dataclass
class Encoded:
    """One pickled value (or tuple of values): its stream, its out-of-band buffers, and the
    objects it reached that can be shared with other names (id → object, kept alive while the
    caller groups names, so no id is reused in the meantime)."""

    stream: bytes
    buffers: list[memoryview]
    shared: dict[int, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: memory blocks shared by tensors (negated data pointers, so they never equal an id)
    storages: set[int] = field(default_factory=set)
    #: item size of each buffer (8 for float64…): the store compresses by byte planes
    widths: list[int] = field(default_factory=list)
    #: shared came from the pickler's memo, so it may hold the pickler's temporaries too (a
    #: walk of the object graph only finds objects the value holds)
    from_memo: bool = False
    #: what stands as a NotStored placeholder inside the value ("a generator", "an open file")
    placeholders: list[str] = field(default_factory=list)


class NotStored:
    """Stands, in a restored value, for a part txpy could not store (a generator, an open
    file...): the rest of the value is restored, and this says what is missing."""

    __slots__ = ("what",)

    def __init__(self, what: str):
        self.what = what

    def __repr__(self) -> str:
        return f"<not stored by txpy: {self.what}>"

    def __reduce__(self) -> tuple[type, tuple[str]]:
        return NotStored, (self.what,)


#: id → (object, its __reduce_ex__(5)) for the instances of notebook classes one examination
#: pickled: names that share objects are pickled one by one and then together, and a
#: notebook's __getstate__ may have side effects (a counter), so it is asked once. The object
#: is held, so its id is not reused while the table lives.
Reductions = dict[int, tuple[Any, Any]]


class _StatePickler(cloudpickle.Pickler):
    """cloudpickle's C pickler plus namespace-aware functions and out-of-band torch tensors."""

    def __init__(self, file: io.BytesIO, namespace: Mapping[str, Any] | None,
                 buffer_callback: Callable[[pickle.PickleBuffer], bool],
                 reductions: Reductions | None):
        super().__init__(file, protocol=5, buffer_callback=buffer_callback)
        self._namespace = namespace
        self._reductions = reductions
        #: the module name the namespace's classes carry ("__main__" in a notebook)
        self._main = namespace.get("__name__") if namespace is not None else None
        self._top: Any = None
        self._view_roots: dict[int, Any] = {}
        self._arrays_at: dict[int, Any] = {}  # address -> a value's array owning that memory
        self._storages: dict[tuple[int, int], _StorageHolder] = {}
        self.storage_keys: set[int] = set()
        self.notes: list[str] = []
        self.placeholders: list[str] = []
        self._cells: dict[int, types.CellType] = {}  # a closure cell -> the one that replaces it

    def dump(self, obj: Any) -> None:
        self._top = obj
        self._view_roots = arrays.view_roots(obj)
        self._arrays_at = arrays.arrays_at(obj)
        super().dump(obj)

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, type):
            return self._class_reduce(obj)
        if isinstance(obj, types.FunctionType) and obj.__globals__ is self._namespace:
            return self._namespace_function_reduce(obj)
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(obj, torch.Tensor):
            reduced = self._tensor_reduce(torch, obj)
            if reduced is not NotImplemented:
                return reduced
        np = sys.modules.get("numpy")
        if np is not None and type(obj) is np.ndarray:
            self.storage_keys.update(arrays.memory_roots(np, obj))
            root = arrays.owner_array(np, obj)
            if id(root) in self._view_roots and obj.dtype.kind in arrays.NUMERIC:
                if root is not obj:
                    return _view_of, (root, obj.__array_interface__["data"][0]
                                      - root.__array_interface__["data"][0], obj.shape,
                                      obj.strides, obj.dtype, obj.flags.writeable)
                if obj.flags.c_contiguous:  # restored owning its memory: view.base is it
                    return _array_over, (pickle.PickleBuffer(obj), obj.dtype, obj.shape,
                                         obj.flags.writeable)
            if obj.dtype == object:
                data = arrays.string_array_data(obj)
                if data is not None:
                    return _rebuild_string_array, (pickle.PickleBuffer(data), obj.shape)
            elif obj.dtype.kind in "mM" and (obj.flags.c_contiguous or obj.flags.f_contiguous):
                # numpy pickles datetimes in band (a copy in the stream); as int64 they go out
                return _view_as, (obj.view(np.int64), obj.dtype)
        cls = type(obj)
        if cls is memoryview:  # cloudpickle stores a memoryview as bytes
            return _memoryview_reduce(obj)
        if cls in _LOCKS and not self._is_top(obj):  # a lock alone is not stored at all
            self.notes.append("a lock is restored as a new, unlocked one")
            return _new_lock, (cls is _LOCKS[1],)
        what = _unstorable(obj)
        if what is not None:
            if self._is_top(obj):  # not cloudpickle's stand-in (a read file as a StringIO)
                raise pickle.PicklingError(f"cannot pickle {what!r} object")
            self.placeholders.append(what)
            return NotStored, (what,)
        if cls is _LRU_WRAPPER:
            return self._lru_cache_reduce(obj)
        cbook = sys.modules.get("matplotlib.cbook")
        if cbook is not None and cls is cbook.CallbackRegistry:
            return matplotlib_callbacks_reduce(obj)
        if self._main is not None and getattr(cls, "__module__", None) == self._main \
                and cls not in self.dispatch_table:
            return self._namespace_instance_reduce(obj)
        return super().reducer_override(obj)

    def _class_reduce(self, cls: type) -> Any:
        """cloudpickle's reduction of a class; a subclass of a class whose __init_subclass__
        the notebook defined is rebuilt without that hook (see _rebuild_class)."""
        if "__slotnames__" not in cls.__dict__:
            # pickling an instance caches __slotnames__ on its class; do it first, or a class
            # pickles differently once one of its instances was stored
            copyreg_slotnames(cls)
        reduced = super().reducer_override(cls)
        bases = cloudpickle_skeleton_bases(reduced)
        if bases is None:
            return reduced
        reduced = cloudpickle_with_state_setter(reduced, _set_class_state)
        slots = type.__getattribute__(cls, "__dict__").get("__slots__")
        if slots is not None and not _is_namedtuple(cls):  # NamedTuple sets its own
            reduced = cloudpickle_with_slots(reduced, slots)
        hooked = _namespace_hooked(bases, self._namespace)
        if not hooked:
            return reduced
        return (_rebuild_class, (hooked, *reduced[1]), *reduced[2:])

    def _lru_cache_reduce(self, wrapper: Any) -> Any:
        """A notebook function under functools.lru_cache by value: the wrapper pickles as a
        reference to ``__main__.<name>``, which a new process does not have (its cache is not
        stored: a restored function computes again)."""
        func = getattr(wrapper, "__wrapped__", None)
        if not (isinstance(func, types.FunctionType) and func.__globals__ is self._namespace):
            return NotImplemented
        params = wrapper.cache_parameters()
        return _rebuild_lru_cache, (func, params["maxsize"], params["typed"]), wrapper.__dict__

    def _namespace_instance_reduce(self, obj: Any) -> Any:
        """An instance of a notebook class, as pickle would reduce it, except:

        * its class has a ``__getattr__``: its state is set without asking the instance for
          ``__setstate__`` (a proxy's ``__getattr__`` recurses or raises on a bare instance);
        * its ``__reduce__`` returns a global name (a singleton): restoring that name's own
          value from a reference to itself is impossible, so it is stored by value;
          elsewhere the name is looked up in the namespace, keeping one object (the session
          binds the name first). A name that does not bind it here is stored by value too.
        """
        reduced = self._reduce_once(obj)
        if not isinstance(reduced, str):
            if 3 <= len(reduced) <= 5 and getattr(type(obj), "__getattr__", None) is not None:
                return (*reduced, None, None)[:5] + (_set_state,)
            return reduced
        if not self._is_top(obj) and self._namespace.get(reduced) is obj:  # type: ignore[union-attr]
            return _namespace_value, (reduced,)
        return _reduce_by_value(obj)

    def _reduce_once(self, obj: Any) -> Any:
        """obj.__reduce_ex__(5), asked once per examination (see Reductions). The items of a
        list or dict subclass come as an iterator, used up by one pickling: they are kept
        as a list, and each pickling gets an iterator of its own."""
        if self._reductions is None:
            return obj.__reduce_ex__(5)
        hit = self._reductions.get(id(obj))
        if hit is None or hit[0] is not obj:
            reduced = obj.__reduce_ex__(5)
            if isinstance(reduced, tuple) and len(reduced) > 3:
                reduced = (*reduced[:3], *(None if items is None else list(items)
                                           for items in reduced[3:5]), *reduced[5:])
            hit = self._reductions[id(obj)] = (obj, reduced)
        reduced = hit[1]
        if isinstance(reduced, tuple) and len(reduced) > 3:
            return (*reduced[:3], *(None if items is None else iter(items)
                                    for items in reduced[3:5]), *reduced[5:])
        return reduced

    def _is_top(self, obj: Any) -> bool:
        """Whether obj is the value being pickled, or one of a component's values (a tuple)."""
        top = self._top
        return obj is top or (type(top) is tuple and any(v is obj for v in top))

    def _namespace_function_reduce(self, func: types.FunctionType) -> Any:
        code, _, _, _, closure = cloudpickle_function_newargs(self, func)
        if func.__closure__:
            # cloudpickle gives each function fresh empty cells (filled by its state): one
            # per cell the functions share, so closures that shared a cell (a nonlocal
            # counter and its reader) still share it after a restore; and they are one
            # co-variable (the cell is a memory they share)
            closure = tuple(self._cells.setdefault(id(c), types.CellType())
                            for c in func.__closure__)
            self.storage_keys.update(map(id, func.__closure__))
        return (types.FunctionType, (code, _NAMESPACE, None, None, closure),
                cloudpickle_function_state(func), None, None, cloudpickle_function_setstate)

    def _tensor_reduce(self, torch: Any, t: Any) -> Any:
        if (type(t) not in (torch.Tensor, torch.nn.Parameter) or t.device.type != "cpu"
                or t.layout != torch.strided or t.is_quantized or t.is_nested):
            return NotImplemented
        if t.is_conj() or t.is_neg():
            t = t.resolve_conj().resolve_neg()
        storage = t.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        holder = self._storages.get(key)
        if holder is None:
            array = self._arrays_at.get(key[0])  # torch.from_numpy(array): one memory
            holder = self._storages[key] = _StorageHolder(
                torch, storage, t.element_size(),
                array if array is not None and array.nbytes == key[1] else None)
            self.storage_keys.add(-key[0])
        grad = None
        if t.is_leaf:
            grad = t.grad
        elif t.requires_grad:
            self.notes.append("a tensor's autograd graph is not stored (restored as a leaf)")
        state = dict(t.__dict__) if t.__dict__ else None
        return (_rebuild_tensor, (holder, t.dtype, t.storage_offset(), tuple(t.size()),
                                  tuple(t.stride()), t.requires_grad, grad,
                                  isinstance(t, torch.nn.Parameter), state))


_LRU_WRAPPER = type(functools.lru_cache(lambda: None))


def _rebuild_lru_cache(func: Callable[..., Any], maxsize: int | None, typed: bool) -> Any:
    return functools.lru_cache(maxsize=maxsize, typed=typed)(func)


def _namespace_value(name: str) -> Any:
    """The object a name binds in the namespace being loaded (NameError: not bound yet)."""
    try:
        return _loading.namespace[name]
    except KeyError:
        raise NameError(f"name {name!r} is not defined", name=name) from None


def _set_state(obj: Any, state: Any) -> None:
    """pickle's BUILD, with ``__setstate__`` looked up on the class, not the instance."""
    setstate = getattr(type(obj), "__setstate__", None)
    if setstate is not None:
        setstate(obj, state)
        return
    slots = None
    if isinstance(state, tuple) and len(state) == 2:
        state, slots = state
    if state:
        obj.__dict__.update(state)
    for name, value in (slots or {}).items():
        setattr(obj, name, value)


def _reduce_by_value(obj: Any) -> Any:
    """What pickle stores for obj when its class does not override __reduce__: its class,
    the arguments of __new__ and its state."""
    cls = type(obj)
    getnewargs = getattr(cls, "__getnewargs__", None)
    args = getnewargs(obj) if getnewargs is not None else ()
    return copyreg_newobj, (cls, *args), obj.__getstate__()


#: what a class's __dict__ holds besides its stored state: made by Python, or caches
_CLASS_OWN = frozenset({"__dict__", "__weakref__", "__module__", "__doc__", "__qualname__",
                        "__slotnames__", "_abc_impl", "__annotations__", "__firstlineno__",
                        "__static_attributes__"})


def _set_class_state(cls: type, state: tuple[dict[str, Any], Any]) -> None:
    """cloudpickle's class state setter, then the attributes the stored class lacked go.

    A class unpickled in the process that defined it is that live class (cloudpickle's
    tracker); its stored attributes are set again, but one a failed transaction added
    (``Feed.x = 1``) would outlive the rollback."""
    cloudpickle_class_setstate(cls, state)
    stored = state[0]
    inherited: dict[str, Any] = {}  # what cloudpickle leaves out as the same as the bases'
    for base in reversed(cls.__bases__):
        inherited.update(vars(base))
    for name, value in list(vars(cls).items()):
        if name not in stored and name not in _CLASS_OWN and inherited.get(name) is not value \
                and not isinstance(value, types.MemberDescriptorType):  # a slot
            type.__delattr__(cls, name)


def _is_namedtuple(cls: type) -> bool:
    return issubclass(cls, tuple) and "_fields" in type.__getattribute__(cls, "__dict__")


def _namespace_hooked(bases: tuple[type, ...], namespace: Mapping[str, Any] | None
                      ) -> tuple[type, ...]:
    """The classes among bases and their ancestors whose own __init_subclass__ was defined in
    the namespace."""
    hooked = {}
    for base in bases:  # cloudpickle's are __orig_bases__: Generic[T], NamedTuple's function
        base = getattr(base, "__origin__", base)
        for cls in getattr(base, "__mro__", ()):
            hook = vars(cls).get("__init_subclass__")
            if isinstance(hook, classmethod) and \
                    getattr(hook.__func__, "__globals__", None) is namespace:
                hooked[cls] = None
    return tuple(hooked)


def _no_hook(cls: type, **kwargs: Any) -> None:
    """Stands for a notebook's __init_subclass__ while a stored subclass is rebuilt."""


def _rebuild_class(hooked: tuple[type, ...], *args: Any) -> type:
    """cloudpickle's class skeleton, made without running the __init_subclass__ hooks that
    the notebook defined on its bases (hooked: their classes).

    The hook ran when the user defined the class, and what it did to the namespace (a
    registry, a class attribute) is stored with the rest. Run again by a restore it would
    register the class twice, need class keywords that are not stored, or look up names the
    restore has not bound yet (NameError: ``Plugin.registry`` while ``Plugin`` is loading).
    A base still being rebuilt has no hook yet.
    """
    hooks = {cls: vars(cls)["__init_subclass__"] for cls in hooked
             if "__init_subclass__" in vars(cls)}
    for cls in hooks:
        type.__setattr__(cls, "__init_subclass__", classmethod(_no_hook))
    try:
        return cloudpickle_make_skeleton_class(*args)
    finally:
        for cls, hook in hooks.items():
            type.__setattr__(cls, "__init_subclass__", hook)


class _StorageHolder:
    """One torch storage, pickled once per stream as an out-of-band uint8 buffer, so views
    that share a storage still share it after a restore."""

    def __init__(self, torch: Any, storage: Any, width: int, array: Any = None):
        self.storage = storage
        self._torch = torch
        self._width = width  # the item size its bytes are compressed by
        self._array = array  # the numpy array of the same component over the same memory

    def __reduce__(self) -> Any:
        if self._array is not None:
            return _storage_over, (self._array,)
        if self.storage.nbytes() == 0:
            return _rebuild_storage, (b"",)
        data = self._torch.empty(0, dtype=self._torch.uint8).set_(self.storage).numpy()
        if self._width > 1 and data.nbytes % self._width == 0:
            data = data.view(f"V{self._width}")  # same bytes, with the item size
        return _rebuild_storage, (pickle.PickleBuffer(data),)


def _storage_over(array: Any) -> Any:
    """The storage of torch.from_numpy(array): the restored array's own memory."""
    import numpy as np
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a read-only array: torch warns, and shares it
        return torch.from_numpy(array.reshape(-1).view(np.uint8)).untyped_storage()


def _rebuild_storage(buffer: Any) -> Any:
    import torch

    if len(memoryview(buffer)) == 0:
        return torch.UntypedStorage(0)
    return torch.frombuffer(buffer, dtype=torch.uint8).untyped_storage()


def _rebuild_tensor(storage: Any, dtype: Any, offset: int, size: tuple[int, ...],
                    stride: tuple[int, ...], requires_grad: bool, grad: Any, is_parameter: bool,
                    state: dict[str, Any] | None) -> Any:
    import torch

    t = torch.empty(0, dtype=dtype).set_(storage, offset, size, stride)
    if is_parameter:
        t = torch.nn.Parameter(t, requires_grad=requires_grad)
    elif requires_grad:
        t.requires_grad_(True)
    if grad is not None:
        t.grad = grad
    if state:
        t.__dict__.update(state)
    return t


_LOCKS = (type(threading.Lock()), type(threading.RLock()))
#: Types whose objects cannot be pickled nor rebuilt from data: inside a value, a NotStored
#: placeholder stands for them, so the rest of the value is stored (types by module, looked
#: up only if that module is imported)
_UNSTORABLE = {"types": ("GeneratorType", "CoroutineType", "AsyncGeneratorType", "FrameType",
                         "TracebackType"),
               # open files (io.StringIO and io.BytesIO pickle: they are not listed)
               "io": ("FileIO", "BufferedReader", "BufferedWriter", "BufferedRandom",
                      "TextIOWrapper"),
               "socket": ("socket",), "sqlite3": ("Connection", "Cursor"),
               "threading": ("Thread",)}


#: type -> whether it is unstorable: the encoder asks for every object it reduces (a figure
#: with thousands of artists), so once per type. A type seen before a module was imported
#: cannot be a subclass of that module's types.
_unstorable_types: dict[type, bool] = {}


def _unstorable(obj: Any) -> str | None:
    """The type name of obj, if objects of its type can never be stored (a generator)."""
    cls = type(obj)
    found = _unstorable_types.get(cls)
    if found is None:
        kinds = tuple(k for module_name, names in _UNSTORABLE.items()
                      if (module := sys.modules.get(module_name)) is not None
                      for k in (getattr(module, n, None) for n in names) if isinstance(k, type))
        found = _unstorable_types[cls] = issubclass(cls, kinds)
    return cls.__name__ if found else None


def _memoryview_reduce(view: memoryview) -> Any:
    """A memoryview as a view of its object (pickled, and so shared, with it) when it shows
    all of it; any other as a view of a copy, read-only or not as it was."""
    owner = view.obj
    try:
        whole = owner is not None and view.c_contiguous and memoryview(owner).nbytes == view.nbytes
    except TypeError:  # an object whose buffer cannot be asked for again
        whole = False
    if whole:
        return _memoryview_over, (owner, view.format, view.shape)
    return _memoryview_copy, (view.tobytes(), view.readonly, view.format, view.shape)


def _shaped(view: memoryview, fmt: str, shape: tuple[int, ...]) -> memoryview:
    if (view.format, view.shape) == (fmt, shape):
        return view
    try:
        return view.cast("B").cast(fmt, shape)
    except (TypeError, ValueError):  # a format cast() does not take: the bytes, unshaped
        return view


def _memoryview_over(owner: Any, fmt: str, shape: tuple[int, ...]) -> memoryview:
    return _shaped(memoryview(owner), fmt, shape)


def _memoryview_copy(data: bytes, readonly: bool, fmt: str, shape: tuple[int, ...]
                     ) -> memoryview:
    return _shaped(memoryview(data if readonly else bytearray(data)), fmt, shape)


def _new_lock(reentrant: bool) -> Any:
    return threading.RLock() if reentrant else threading.Lock()


def _array_over(buffer: Any, dtype: Any, shape: tuple[int, ...], writeable: bool) -> Any:
    """An array over buffer's memory whose base is no other array, so that the views
    restored from it have it as their base, as before."""
    import numpy as np

    array = np.ndarray(shape, dtype, buffer=buffer)
    if not writeable:
        array.flags.writeable = False
    return array


def _view_of(root: Any, offset: int, shape: tuple[int, ...], strides: tuple[int, ...],
             dtype: Any, writeable: bool) -> Any:
    """A view of root, as it was of root's memory before it was stored."""
    import numpy as np

    view = np.ndarray(shape, dtype, buffer=root, offset=offset, strides=strides)
    if not writeable:
        view.flags.writeable = False
    return view


def _view_as(array: Any, dtype: Any) -> Any:
    return array.view(dtype)


def _rebuild_string_array(buffer: Any, shape: tuple[int, ...]) -> Any:
    import numpy as np

    parts = bytes(buffer).decode("utf-8", "surrogatepass").split("\x00")
    out = np.empty(len(parts), dtype=object)
    out[:] = parts
    return out.reshape(shape)


def encode(value: Any, namespace: Mapping[str, Any] | None, *, collect_shared: bool,
           reductions: Reductions | None = None) -> Encoded:
    """Pickle value; UnpicklableError if it (or something it holds) cannot be pickled.

    reductions: shared by the encodes of one examination (see Reductions).

    Deep graphs that overflow the recursion limit are retried on a thread with a large stack.
    """
    if value is namespace and namespace is not None:  # G = globals(): the namespace itself
        value = _NAMESPACE
    try:
        return _encode(value, namespace, collect_shared, reductions)
    except RecursionError:
        return _on_big_stack(lambda: _encode(value, namespace, collect_shared, reductions))


def _encode(value: Any, namespace: Mapping[str, Any] | None, collect_shared: bool,
            reductions: Reductions | None) -> Encoded:
    out = io.BytesIO()
    buffers: list[memoryview] = []
    widths: list[int] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        raw = buffer.raw()
        if raw.nbytes < IN_BAND_BELOW:
            return True  # small: in the stream, so a commit writes a few files, not dozens
        buffers.append(raw)
        widths.append(memoryview(buffer).itemsize)
        return False

    pickler = _StatePickler(out, namespace, out_of_band, reductions)
    try:
        pickler.dump(value)
    except RecursionError:
        raise
    except Exception as e:  # any failure inside a reducer means "cannot be stored"
        if isinstance(e.__cause__, RecursionError):  # cloudpickle wraps it
            raise e.__cause__ from None
        raise UnpicklableError(_reason(e)) from None
    stream = out.getvalue()
    shared = {}
    from_memo = collect_shared and len(stream) <= MEMO_LIMIT
    if collect_shared:
        shared = (graph.shared_in_memo(pickler.memo.copy(), namespace) if from_memo
                  else graph.reachable_shared(value, namespace))
    return Encoded(stream, buffers, shared, pickler.notes, pickler.storage_keys, widths,
                   from_memo, pickler.placeholders)


def _reason(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:200]


def decode(stream: bytes, buffers: Sequence[Any], namespace: dict[str, Any]) -> Any:
    """Unpickle a stream; functions it defines get namespace as their globals."""
    previous = getattr(_loading, "namespace", None)
    _loading.namespace = namespace
    try:
        try:
            return pickle.loads(stream, buffers=buffers)
        except RecursionError:
            return _on_big_stack(lambda: pickle.loads(stream, buffers=buffers))
    except ModuleNotFoundError as e:
        raise RestoreError(f"needs the package {e.name!r}, which is not installed here") from None
    finally:
        _loading.namespace = previous


def _on_big_stack(work: Callable[[], Any]) -> Any:
    """Run work on a thread with a 1 GiB stack and a high recursion limit (deep object graphs)."""
    result: list[Any] = []
    error: list[BaseException] = []

    def run() -> None:
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(1_000_000)
        try:
            result.append(work())
        except BaseException as e:  # re-raised in the caller's thread
            error.append(e)
        finally:
            sys.setrecursionlimit(limit)

    old_size = threading.stack_size(1 << 30)
    try:
        worker = threading.Thread(target=run, name="txpy-deep-pickle")
        worker.start()
    finally:
        threading.stack_size(old_size)
    worker.join()
    if error:
        if isinstance(error[0], RecursionError):
            raise UnpicklableError("object graph too deep to pickle") from None
        raise error[0]
    return result[0]
