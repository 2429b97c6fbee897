"""Every private API of another package that txpy relies on, version-checked in one place.

txpy stores functions and classes the way cloudpickle does, but with the live namespace as
their globals, so it needs cloudpickle's private helpers (cloudpickle 3.x); it pickles like
CPython's own ``object.__reduce_ex__`` (``copyreg`` internals); and it removes its ``%txpy``
magic on unload, which IPython 8 and 9 offer no public way to do.

Importing this module checks cloudpickle's major version and that each private name below
exists, and raises UnsupportedVersionError naming the library, its version and what to install,
rather than an AttributeError in the middle of a commit. IPython is not a dependency: it is
checked here when it is already loaded (it is, in any shell that loads the extension), else by
forget_line_magic. tests/test_compat.py checks that each name still does what txpy relies on.

The hot-path names are plain aliases, so the encoder pays nothing for going through here.
"""

from __future__ import annotations

import copyreg
import itertools
import platform
import sys
import types
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import cloudpickle
from cloudpickle import cloudpickle as _cp

from .errors import TxpyError


class UnsupportedVersionError(TxpyError, ImportError):
    """A library txpy reaches into is a release whose private API txpy was not written for."""


def require(library: str, version: str, majors: range, install: str) -> None:
    """UnsupportedVersionError unless version's major number is in majors: private names may
    keep their spelling across a major release and still change what they do, which would
    corrupt stores silently rather than fail."""
    major = version.partition(".")[0]
    if not (major.isdigit() and int(major) in majors):
        supported = " or ".join(f"{m}.x" for m in majors)
        raise UnsupportedVersionError(
            f"txpy relies on private parts of {library} {supported}, and this is {library} "
            f"{version}: pip install '{install}'")


def private(owner: Any, name: str, library: str, version: str) -> Any:
    """owner.name, or UnsupportedVersionError saying that this release of library lacks it."""
    try:
        return getattr(owner, name)
    except AttributeError:
        where = owner.__name__ if isinstance(owner, types.ModuleType) else \
            f"{owner.__module__}.{owner.__qualname__}"
        raise UnsupportedVersionError(
            f"{library} {version} has no {where}.{name}, which txpy relies on (there is no "
            f"public equivalent): install an earlier {library} release, or a newer txpy"
        ) from None


_CLOUDPICKLE = cloudpickle.__version__
require("cloudpickle", _CLOUDPICKLE, range(3, 4), "cloudpickle>=3,<4")

#: ``cloudpickle.Pickler._function_getnewargs(pickler, func)`` (cloudpickle 3.x): the
#: arguments of ``types.FunctionType`` for a function pickled by value (code, globals, name,
#: defaults, closure of empty cells). Called as a plain function: a subclass of the pickler
#: cannot reach it any other way.
cloudpickle_function_newargs = private(
    _cp.Pickler, "_function_getnewargs", "cloudpickle", _CLOUDPICKLE)
#: ``cloudpickle.cloudpickle._function_setstate(func, state)`` (cloudpickle 3.x): fills a
#: function made from cloudpickle_function_newargs with cloudpickle_function_state. A pickle
#: names it, so stored functions load only while cloudpickle has it.
cloudpickle_function_setstate = private(_cp, "_function_setstate", "cloudpickle", _CLOUDPICKLE)
#: ``cloudpickle.cloudpickle._make_skeleton_class`` (cloudpickle 3.x): the first item of
#: cloudpickle's reduction of a class pickled by value, called to rebuild it; a pickle names it.
cloudpickle_make_skeleton_class = private(
    _cp, "_make_skeleton_class", "cloudpickle", _CLOUDPICKLE)
#: sets a skeleton class's attributes from its pickled state ``(clsdict, slotstate)``
cloudpickle_class_setstate = private(_cp, "_class_setstate", "cloudpickle", _CLOUDPICKLE)
_extract_code_globals = private(_cp, "_extract_code_globals", "cloudpickle", _CLOUDPICKLE)
_get_cell_contents = private(_cp, "_get_cell_contents", "cloudpickle", _CLOUDPICKLE)
_find_imported_submodules = private(
    _cp, "_find_imported_submodules", "cloudpickle", _CLOUDPICKLE)

_PYTHON = platform.python_version()
#: ``copyreg._slotnames(cls)`` (CPython 3.10+): computes and caches ``cls.__slotnames__`` as
#: pickling an instance does; pickle has no public hook that only fills that cache.
copyreg_slotnames = private(copyreg, "_slotnames", "CPython", _PYTHON)
#: ``copyreg.__newobj__(cls, *args)`` (CPython 3.10+): the constructor that
#: ``object.__reduce_ex__`` puts in a reduction; not in copyreg's ``__all__``.
copyreg_newobj = private(copyreg, "__newobj__", "CPython", _PYTHON)


def cloudpickle_skeleton_bases(reduced: Any) -> tuple[type, ...] | None:
    """The bases of a class that cloudpickle's ``reducer_override`` reduced to a skeleton (a
    class pickled by value), else None. cloudpickle 3.x: ``_make_skeleton_class(type_constructor,
    name, bases, type_kwargs, class_tracker_id, extra)``."""
    if reduced is NotImplemented or reduced[0] is not cloudpickle_make_skeleton_class:
        return None
    return reduced[1][2]


#: ``cloudpickle.cloudpickle._DYNAMIC_CLASS_TRACKER_BY_ID`` and its lock (cloudpickle 3.x): a
#: class pickled by value is unpickled as the live class of the same tracker id, when this
#: process has one, and its attributes are reset from the pickle.
_CLASS_TRACKER = private(_cp, "_DYNAMIC_CLASS_TRACKER_BY_ID", "cloudpickle", _CLOUDPICKLE)
_CLASS_TRACKER_LOCK = private(_cp, "_DYNAMIC_CLASS_TRACKER_LOCK", "cloudpickle", _CLOUDPICKLE)


@contextmanager
def fresh_classes() -> Iterator[None]:
    """Unpickle classes stored by value as new classes, not as this process's live ones.

    Loading a commit into a new dict (txpy.load) in the process of a live session would
    otherwise take the session's own classes and reset their methods to ones whose globals
    are the new dict: the live session would change under its user. cloudpickle 3.x keeps no
    public switch, so its tracker is emptied while the block runs, then put back."""
    with _CLASS_TRACKER_LOCK:
        saved = dict(_CLASS_TRACKER)
        _CLASS_TRACKER.clear()
    try:
        yield
    finally:
        with _CLASS_TRACKER_LOCK:
            _CLASS_TRACKER.clear()
            _CLASS_TRACKER.update(saved)


_tracker_id = private(_cp, "_get_or_create_tracker_id", "cloudpickle", _CLOUDPICKLE)


def cloudpickle_track_classes(values: Iterable[Any], module: str | None) -> None:
    """Give the classes module defines among values and their instances' classes (with their
    bases) cloudpickle's tracker ids in this process, before a forked child pickles them.
    An id the child makes stays in the child, and this process would then unpickle its own
    classes as new ones: a rollback would replace a notebook's classes and its instances."""
    if module is None:
        return
    values = list(values)
    kinds = set(map(type, values))  # a handful, however many values
    metaclasses = {k for k in kinds if issubclass(k, type)}
    classes = [v for v in values if type(v) in metaclasses] if metaclasses else []
    for cls in kinds.union(classes):
        if cls not in _tracked:
            _track(cls, module)


#: classes already given their ids (or not the namespace's): weakly, a class may go
_tracked: weakref.WeakSet[type] = weakref.WeakSet()


def _track(kind: type, module: str) -> None:
    if getattr(kind, "__module__", None) == module:
        for cls in kind.__mro__:
            if getattr(cls, "__module__", None) == module:
                _tracker_id(cls)
    try:
        _tracked.add(kind)
    except TypeError:  # not weakly referenceable
        pass


def cloudpickle_with_state_setter(reduced: Any, setter: Any) -> Any:
    """A skeleton-class reduction whose state is set by setter(cls, state) rather than by
    cloudpickle's own ``_class_setstate`` (the last item of cloudpickle 3.x's reduction)."""
    if len(reduced) != 6 or reduced[5] is not cloudpickle_class_setstate:
        return reduced
    return (*reduced[:5], setter)


def cloudpickle_with_slots(reduced: Any, slots: Any) -> Any:
    """A skeleton-class reduction (see cloudpickle_skeleton_bases) whose class is created with
    ``__slots__``: cloudpickle 3.x creates it without them and sets ``__slots__`` as a plain
    attribute afterwards, so restored instances get a ``__dict__`` and no slot descriptors.
    The slots go into ``type_kwargs`` (argument 3), the namespace the class is created with."""
    args = list(reduced[1])
    args[3] = {**args[3], "__slots__": slots}
    return (reduced[0], tuple(args), *reduced[2:])


def cloudpickle_function_state(func: types.FunctionType
                               ) -> tuple[dict[str, Any], dict[str, Any]]:
    """cloudpickle's ``_function_getstate`` (cloudpickle 3.x) without the globals (a restored
    function uses the live namespace), with its submodule lookup cached: that lookup scans
    sys.modules for every function every time (0.9 ms for a function using torch and numpy,
    0.06 ms cached). The state is cloudpickle_function_setstate's private format."""
    slotstate = {
        "__name__": "".join(func.__name__),  # "".join: see cloudpickle (string interning)
        "__qualname__": "".join(func.__qualname__),
        "__annotations__": func.__annotations__,
        "__kwdefaults__": func.__kwdefaults__,
        "__defaults__": func.__defaults__,
        "__module__": func.__module__,
        "__doc__": func.__doc__,
        "__closure__": func.__closure__,
        "__globals__": {},
        "_cloudpickle_submodules": _submodules_used(func),
    }
    return {"".join(k): v for k, v in func.__dict__.items()}, slotstate


_submodules: dict[tuple[Any, ...], list[types.ModuleType]] = {}


def _submodules_used(func: types.FunctionType) -> list[types.ModuleType]:
    """The imported submodules func reaches as attributes of modules it uses (``np.linalg``),
    so that a restore imports them; cached while sys.modules keeps its size."""
    names = _extract_code_globals(func.__code__)
    used = [func.__globals__[n] for n in names if n in func.__globals__]
    used += map(_get_cell_contents, func.__closure__ or ())
    modules = tuple(m for m in used if isinstance(m, types.ModuleType))
    key = (func.__code__, modules, len(sys.modules))
    found = _submodules.get(key)
    if found is None:
        if len(_submodules) >= 4096:
            _submodules.clear()
        found = _submodules[key] = _find_imported_submodules(func.__code__, modules)
    return found


def matplotlib_callbacks_reduce(registry: Any) -> tuple[Any, ...]:
    """A matplotlib CallbackRegistry reduced as its own pickling does, but without changing
    it: its __getstate__ advances its callback-id counter, so every pickle of a figure
    changed the figure (and its digest: verify saw each examined figure as changed). The
    counter is put back where it was; a restore resumes it from there, as pickle does."""
    state = registry.__getstate__()
    cid = state.get("_cid_gen")
    if isinstance(cid, int):
        registry._cid_gen = itertools.count(cid)
    return copyreg.__newobj__, (type(registry),), state


def pandas_changed_options(pandas: Any) -> dict[str, Any]:
    """{option: value} of the pandas options set away from their defaults. Read from pandas'
    own tables: ``pd.get_option`` warns on deprecated options (an error under
    ``filterwarnings("error")``) and costs ~3 µs each."""
    config = pandas._config.config
    registered = private(config, "_registered_options", "pandas", pandas.__version__)
    values = private(config, "_global_config", "pandas", pandas.__version__)
    changed = {}
    for key, option in registered.items():
        where = values
        *path, last = key.split(".")
        for part in path:
            where = where.get(part, {})
        if last in where and where[last] != option.defval:
            changed[key] = where[last]
    return changed


def pandas_set_options(pandas: Any, changed: dict[str, Any]) -> None:
    """Set pandas' options to changed and every other one back to its default."""
    import warnings

    now = pandas_changed_options(pandas)
    registered = pandas._config.config._registered_options
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated options warn when set
        for key in now.keys() | changed.keys():
            target = changed.get(key, registered[key].defval if key in registered else None)
            if key in registered and now.get(key, registered[key].defval) != target:
                pandas.set_option(key, target)


def check_ipython() -> None:
    """UnsupportedVersionError unless IPython is 8.x or 9.x and its MagicsManager keeps the
    tables forget_line_magic edits."""
    import IPython
    from IPython.core.magic import MagicsManager

    require("IPython", IPython.__version__, range(8, 10), "ipython>=8,<10")
    for table in ("magics", "registry"):
        private(MagicsManager, table, "IPython", IPython.__version__)


if "IPython" in sys.modules:
    check_ipython()


def forget_line_magic(shell: Any, name: str, magics_class_name: str) -> None:
    """Unregister the line magic ``%name`` and the Magics class that provided it, so the shell
    is as before ``register_magics``. IPython 8 and 9 can register magics but not unregister
    them: their MagicsManager keeps ``magics["line"]`` (name → method) and ``registry`` (class
    name → instance), and this removes the entries from both."""
    check_ipython()
    manager = shell.magics_manager
    manager.magics["line"].pop(name, None)
    manager.registry.pop(magics_class_name, None)
