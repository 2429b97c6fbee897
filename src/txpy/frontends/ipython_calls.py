"""Which names IPython's own calls in a cell reach: the frontend's hook for txpy.track.

IPython turns ``%magic args`` into ``get_ipython().run_line_magic('magic', 'args')``. Such a
call with constant arguments can be followed when the magic runs no code (``%matplotlib``) or
runs code given as text (``%time f(x)``); any other use of the shell can touch anything.
"""

from __future__ import annotations

import dis
import re
import types
from typing import Any

from .. import track

#: Attributes of the shell that are the user namespace itself.
_NAMESPACE_ATTRIBUTES = frozenset({"user_ns", "user_global_ns", "user_ns_hidden"})


class _Dynamic(Exception):
    """The cell uses the shell in a way that can touch any name."""


#: Output history: the values of earlier cells under other names (``_``, ``__``, ``_12``,
#: ``Out[12]``); txpy does not track these names, so reading one may mutate anything.
_OUTPUT_HISTORY = re.compile(r"_{1,3}|_\d+|Out|_oh")
_LOADS = frozenset({"LOAD_NAME", "LOAD_GLOBAL"})


def shell_calls(code: types.CodeType) -> frozenset[str] | None:
    """The names code reaches through IPython's shell calls; None if it cannot tell."""
    if not _NAMESPACE_ATTRIBUTES.isdisjoint(code.co_names) or _reads_output_history(code):
        return None
    if "get_ipython" not in code.co_names:
        return frozenset()
    try:
        return frozenset(_shell_call_names(code))
    except _Dynamic:
        return None


def _reads_output_history(code: types.CodeType) -> bool:
    """Whether code reads ``_``, ``Out``… (a loop's ``for _ in`` only binds ``_``)."""
    if not any(_OUTPUT_HISTORY.fullmatch(n) for n in code.co_names):
        return False
    return any(i.opname in _LOADS and _OUTPUT_HISTORY.fullmatch(i.argval)
               for i in dis.get_instructions(code))


#: IPython shell methods a transformed cell may call with constant arguments.
_SHELL_CALLS = frozenset({"run_line_magic", "run_cell_magic", "system", "getoutput"})

#: Magics whose argument is Python code run in the user namespace.
_CODE_MAGICS = frozenset({"time", "timeit", "prun", "capture"})

#: Magics (and aliases) that cannot touch the user namespace except by binding new names,
#: which the session catches by itself.
_INERT_MAGICS = frozenset({
    "matplotlib", "config", "pwd", "cd", "who", "whos", "who_ls", "lsmagic", "magic", "pinfo",
    "pinfo2", "psearch", "pdoc", "pdef", "psource", "pfile", "precision", "xmode", "colors",
    "history", "hist", "txpy", "pip", "conda", "env", "ls", "ll", "lf", "lk", "lx", "cat",
    "cp", "mv", "mkdir", "rm", "rmdir", "clear", "page", "pprint", "doctest_mode",
    "bash", "sh", "script", "writefile", "html", "javascript", "js", "markdown", "latex",
    "svg", "perl", "ruby", "sx", "system", "timeit_setup",
})



_SKIP_OPS = frozenset({"PRECALL", "CACHE", "NOP", "EXTENDED_ARG", "PUSH_NULL", "KW_NAMES"})


def _shell_call_names(code: types.CodeType) -> set[str]:
    """Names reached by IPython's ``get_ipython().run_line_magic('name', 'args')`` calls in
    code (what ``%magic`` lines become): only calls with constant arguments to magics known
    to run no code, or to run code given as text, can be followed."""
    names: set[str] = set()
    ins = [i for i in dis.get_instructions(code) if i.opname not in _SKIP_OPS]
    for k, i in enumerate(ins):
        if i.argval != "get_ipython" or not i.opname.startswith("LOAD_"):
            continue
        if k + 2 >= len(ins) or not ins[k + 1].opname.startswith("CALL") \
                or ins[k + 2].opname not in ("LOAD_METHOD", "LOAD_ATTR") \
                or ins[k + 2].argval not in _SHELL_CALLS:
            raise _Dynamic
        args = []
        for j in ins[k + 3:]:
            if j.opname.startswith("CALL"):
                break
            if j.opname != "LOAD_CONST" or not isinstance(j.argval, (str, int)):
                raise _Dynamic
            args.append(j.argval)
        names.update(_magic_names(ins[k + 2].argval, args))
    return names


def _magic_names(method: str, args: list[Any]) -> set[str]:
    if method in ("system", "getoutput"):
        return set()
    magic = args[0] if args else None
    if magic in _INERT_MAGICS:
        return set()
    if magic not in _CODE_MAGICS:
        raise _Dynamic
    texts = [a for a in args[1:] if isinstance(a, str)]
    names: set[str] = set()
    for text in texts:
        found = _names_in_source(text, strip_options=True)
        names |= found.names
        if found.dynamic:
            raise _Dynamic
    return names


def _names_in_source(text: str, strip_options: bool) -> track.CodeNames:
    """Names in a magic's code argument; leading ``-n 10``-style options are dropped."""
    words = text.split(" ")
    for k in range(len(words) if strip_options else 1):
        source = " ".join(words[k:])
        try:
            return track.code_names(compile(source, "<magic>", "exec"), shell_calls)
        except SyntaxError:
            continue
    raise _Dynamic
