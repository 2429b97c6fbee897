"""The verbs every face shares, named after the commands (dulwich's porcelain): log, show,
diff, branches, status, gc, fsck.

Each takes a Repository (and history/ref strings) and returns what the user sees as plain
lines that fit in 80 columns: a list of names wraps between names, never inside one. The
`txpy` command and the ``%txpy`` magics only print these lines, so a listing is formatted
once, here. Faces that hold a Session wait for its writes first (``session.wait()``): these
read the store as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .errors import TxpyError, UnknownRefError
from .humanize import WIDTH, size, when, wrap
from .model import ANY_NAME, Commit, Tree, Unstored
from .remote import Repair, TransferStats
from .repo import FsckReport, Repository, diff_trees, looks_like_id

#: names a log line lists for one commit; the rest are counted
LOG_NAMES = 12


# --- which history, which commit -----------------------------------------------------------
def history_named(repo: Repository, history: str | None) -> str | None:
    """The history a command means: the one named (it must exist), else the store's only
    one; None when the store has several (or none) and no name was given."""
    names = repo.histories()
    if history is not None:
        if history not in names:
            raise TxpyError(f"no history {history!r} in this store; it has: "
                            f"{', '.join(names) or 'none'}")
        return history
    return names[0] if len(names) == 1 else None


def names_history(repo: Repository, name: str) -> bool:
    """Whether name, where a branch may stand (`txpy push origin NAME`), means a history:
    one is called so and no history has a branch of that name."""
    histories = repo.histories()
    return name in histories and not any(name in repo.refs.branches(h) for h in histories)


def resolve(repo: Repository, history: str | None, ref: str) -> Commit:
    """The commit ref names in history (see `history_named`); a commit id needs no history."""
    name = history_named(repo, history)
    if name is None and (ref == "HEAD" or not looks_like_id(ref)):
        if not repo.histories():
            raise UnknownRefError(f"{repo.path} has no commits yet")
        raise TxpyError(f"{ref!r} is ambiguous: this store has several histories; pass -H NAME")
    return repo.resolve(name, ref)


def _histories(repo: Repository, history: str | None) -> list[str]:
    return [history] if history is not None else repo.histories()


# --- log -----------------------------------------------------------------------------------
#: (branch, commit id) of HEAD as a session sees it: a kernel on a branch of its own
Head = tuple[str | None, str | None]


def _head(repo: Repository, history: str, at: Head | None) -> Head:
    """HEAD of history as given (a session's), else as the store has it."""
    return at if at is not None else repo.refs.head(history)


def log(repo: Repository, history: str | None = None, *, limit: int | None = None,
        title: bool = True, at: Head | None = None) -> list[str]:
    """Commits of history (of every history when None), newest first: HEAD marked ``*``,
    the branches at each, its new data and the names it added (+), changed (~), removed (-).
    limit: show only the newest so many of each history."""
    names = _histories(repo, history)
    if not names:
        return ["the store has no commits yet"]
    return [line for name in names for line in _log_of(repo, name, limit, title, at)]


def _log_of(repo: Repository, history: str, limit: int | None, title: bool,
            at: Head | None) -> list[str]:
    commits = repo.log(history)
    if not commits:
        return [f"history {history!r} has no commits yet"]
    shown = commits[:limit] if limit is not None else commits
    head_branch, head = _head(repo, history, at)
    marks = _ref_marks(repo.refs.branches(history), head_branch, head)
    trees: dict[str, Tree] = {}

    def tree(commit_id: str) -> Tree:
        if commit_id not in trees:
            trees[commit_id] = repo.tree(repo.read_commit(commit_id))
        return trees[commit_id]

    lines = [f"history {history}"] if title else []
    for c in shown:
        lines += _log_entry(c, c.id == head, marks.get(c.id, []), _changes(c, tree))
    if len(commits) > len(shown):
        lines.append(f"  ... {len(commits) - len(shown)} older commits not shown")
    return lines


def _ref_marks(tips: dict[str, str], head_branch: str | None, head: str | None
               ) -> dict[str, list[str]]:
    """commit id -> what points at it, as git marks it: HEAD first ("HEAD -> main", or
    "HEAD" when detached), then the other branches by name."""
    marks: dict[str, list[str]] = {}
    for branch, cid in tips.items():
        marks.setdefault(cid, []).append(f"HEAD -> {branch}" if branch == head_branch
                                         else branch)
    if head is not None and head_branch is None:
        marks.setdefault(head, []).append("HEAD")
    for labels in marks.values():
        labels.sort(key=lambda label: not label.startswith("HEAD"))
    return marks


def _changes(commit: Commit, tree: Callable[[str], Tree]) -> list[str]:
    """'+new', '~changed', '-gone' names against the first parent (all new for a root),
    txpy's own (dunder) names left out."""
    now = tree(commit.id)
    if commit.parents:
        d = diff_trees(tree(commit.parents[0]), now)
        marked = ([f"+{n}" for n in d.added] + [f"~{n}" for n in d.changed]
                  + [f"-{n}" for n in d.removed])
    else:
        marked = [f"+{n}" for n in sorted(now.names)]
    marked = [m for m in marked if not m[1:].startswith("__")]
    more = len(marked) - LOG_NAMES
    return marked[:LOG_NAMES] + ([f"(+{more} more)"] if more > 0 else [])


def _log_entry(c: Commit, is_head: bool, refs: list[str], changes: list[str]) -> list[str]:
    """Three lines at most: id, time, kind, new data and refs; the message or first line of
    code; the names changed."""
    covers = c.stats.get("covers", 1)
    kind = f"{c.kind}×{covers}" if covers > 1 else c.kind
    lead = (f"{'*' if is_head else ' '} {c.short}  {when(c.time, short=True)}  {kind:<5} "
            f"{size(c.stats.get('bytes_new', 0)):>8}")
    lines = wrap(refs, lead=lead + " ", sep=",", indent=6) if refs else [lead]
    what = _first_line(c)
    if what:
        lines.append(f"    {what}")
    return lines + (wrap(changes, lead="    ") if changes else [])


def _first_line(c: Commit, width: int = WIDTH - 4) -> str:
    """The commit's message, else the first line of its code, cut to fit."""
    text = (c.message or c.code or "").strip().splitlines()
    if not text:
        return ""
    line = text[0].strip()
    if len(line) > width or len(text) > 1:
        line = line[:width - 2] + " …"
    return line


# --- show ----------------------------------------------------------------------------------
def show(repo: Repository, history: str | None, ref: str) -> list[str]:
    """A commit: who and when, its message, the names its transaction read and wrote, each
    variable with what it is and its size, what was not stored and why, its code (as
    written) and the environment it ran in."""
    c = resolve(repo, history, ref)
    tree = repo.tree(c)
    lines = [f"commit {c.id}"]
    lines += wrap([f"history {c.history}", f"parents {' '.join(p[:12] for p in c.parents) or '-'}",
                   when(c.time), c.kind], sep=",")
    if c.message:
        lines += wrap(c.message.split())
    covers = c.stats.get("covers", 1)
    if covers > 1:
        lines.append(f"covers {covers} transactions (captured together: their captures fell "
                     "behind)")
    for label, names in (("reads:", c.reads), ("writes:", c.writes)):
        if names == ANY_NAME:
            lines.append(f"{label} any name (the code reached names dynamically)")
        elif names:
            lines += wrap(names, lead=label, sep=",")
    lines += _variables(repo, tree)
    lines += _unstored(tree.unstored)
    if c.code:
        lines += ["code:", *c.code.strip("\n").splitlines()]
    return lines + _environment(c)


def _variables(repo: Repository, tree: Tree) -> list[str]:
    """One line per stored name: what it is, the size of its component, and the names it
    shares that component (and its size) with."""
    if not tree.components:
        return []
    sizes: dict[str, str] = {}
    for key in set(tree.components.values()):  # a component's names share one size
        try:
            sizes[key] = size(repo.value_size(repo.manifest(key)))
        except TxpyError:
            sizes[key] = "damaged"
    rows = sorted(tree.components.items())
    names_of: dict[str, list[str]] = {}
    for name, key in rows:
        names_of.setdefault(key, []).append(name)
    name_w = min(max(len(n) for n, _ in rows), 20)
    kind_w = min(max(len(_kind(tree, n)) for n, _ in rows), 32)
    lines = ["variables:"]
    for name, key in rows:
        shared = [n for n in names_of[key] if n != name]
        row = f"  {name:<{name_w}}  {_kind(tree, name):<{kind_w}}  {sizes[key]:>9}"
        if shared:
            row += f"  with {', '.join(shared)}"
        lines += [row] if len(row) <= WIDTH else wrap(row.split(), lead=" ", indent=6)
    return lines


def _kind(tree: Tree, name: str) -> str:
    """What name holds, as the session described it; older commits: its component key."""
    return tree.kinds.get(name) or f"component {tree.components[name][:12]}"


def _unstored(unstored: dict[str, Unstored]) -> list[str]:
    return [line for n, u in sorted(unstored.items())
            for line in wrap(f"not stored: {n} ({u.type_name}): {u.reason}".split())]


def _environment(c: Commit) -> list[str]:
    env = c.env
    lines = [f"environment: python {env.get('python', '?')} on {env.get('platform', '?')}"]
    packages = [f"{k} {v}" for k, v in env.get("packages", {}).items()]
    return lines + (wrap(packages, lead="packages:", sep=",") if packages else [])


# --- diff, branches, status ----------------------------------------------------------------
def diff(repo: Repository, history: str | None, a: str, b: str | None = None) -> list[str]:
    """Names added, removed and changed from commit a to commit b (HEAD by default)."""
    d = repo.diff(resolve(repo, history, a), resolve(repo, history, b or "HEAD"))
    if not d:
        return ["no differences"]
    return [line for label, names in (("added:", d.added), ("removed:", d.removed),
                                      ("changed:", d.changed)) if names
            for line in wrap(names, lead=label, sep=",")]


def branches(repo: Repository, history: str | None = None, *, title: bool = True,
             at: Head | None = None) -> list[str]:
    """Branches of history (of every history when None) with their commits; ``*`` marks
    HEAD's branch, or a detached HEAD."""
    lines = []
    for name in _histories(repo, history):
        head_branch, head = _head(repo, name, at)
        tips = repo.refs.branches(name)
        width = max(map(len, tips), default=0)
        lines += [f"history {name}"] if title else []
        lines += [f"{'*' if b == head_branch else ' '} {b:<{width}}  {cid[:12]}"
                  for b, cid in tips.items()]
        if head_branch is None and head is not None:
            lines.append(f"* (HEAD detached at {head[:12]})")
    return lines


def status(repo: Repository, history: str | None = None, *, at: Head | None = None
           ) -> list[str]:
    """Where the store is and its size; for history (every history when None) its branch,
    last commit and the names it could not store."""
    lines = wrap([f"store:   {repo.path}", f"({size(repo.disk_usage())})"])
    for name in _histories(repo, history):
        branch, head = _head(repo, name, at)
        lines += [f"history: {name}", f"branch:  {branch or '(detached)'}"]
        if head is None:
            lines.append("last commit: none")
            continue
        c = repo.read_commit(head)
        lines.append(f"last commit: {c.short} {when(c.time)} {c.kind}")
        lines += _unstored(repo.tree(c).unstored)
    return lines


# --- maintenance and remotes ---------------------------------------------------------------
def gc(repo: Repository) -> list[str]:
    """Delete chunks no commit refers to (left by a crash or a failed commit)."""
    removed, freed = repo.gc()
    return [f"removed {removed} unreferenced chunks, freed {size(freed)}"]


@dataclass(frozen=True)
class Fsck:
    """What fsck found; ok when nothing is damaged."""

    report: FsckReport

    @property
    def ok(self) -> bool:
        return self.report.ok

    def lines(self) -> list[str]:
        r = self.report
        lines = [line for d in r.damage for line in wrap(
            f"commit {d.commit[:12]} ({d.history}): {d.what}"
            f"{' — affects ' + ', '.join(d.names) if d.names else ''}".split())]
        return lines + [f"{r.commits} commits, {r.chunks} records and chunks checked: "
                        + ("ok" if r.ok else f"{len(r.damage)} problems")]


def fsck(repo: Repository, progress: Callable[[int, int], None] | None = None) -> Fsck:
    """Verify every commit, record and chunk against its hash and signature; progress(i, n)
    before commit i of n."""
    return Fsck(repo.fsck(progress))


def remotes(repo: Repository) -> list[str]:
    return [line for name, (url, _) in repo.remotes().items()
            for line in wrap([f"{name:12}", url])]


def trusted(repo: Repository) -> list[str]:
    """This store's signing key, and every key whose commits it trusts."""
    lines = ["this store's key:", f"  {repo.signer.key_id}", "trusted keys:"]
    return lines + [line for key, label in repo.trusted_keys().items()
                    for line in wrap([f"  {key}", *label.split()], indent=6)]


def transferred(verb: str, stats: TransferStats) -> list[str]:
    """What one push, pull or clone moved; verb says which and where ("pushed to origin:");
    then any damage it found on the remote, and any branch that diverged from the remote's."""
    text = f"{verb} {stats.commits} commits, {stats.objects} chunks, {size(stats.bytes)}"
    if stats.branches:
        text += "; branches: " + ", ".join(stats.branches)
    lines = wrap(text.split()) + _repaired(stats.repair)
    for d in stats.diverged:
        base = f"at {d.base[:12]}" if d.base else "(no common commit)"
        lines += wrap(f"your {d.branch} and {d.remote}/{d.branch} ({d.history}) diverged "
                      f"{base}. Session states do not merge like text; to keep both, push "
                      f"yours as a branch: txpy push {d.remote} {d.branch}:NAME".split())
    return lines


def _repaired(r: Repair) -> list[str]:
    if not r.damaged:
        return []
    text = f"the remote was damaged: {r.damaged} of {r.checked} objects checked"
    text += (f"; {r.damaged - r.unrepaired} re-sent" if r.damaged > r.unrepaired else "")
    text += (f"; {r.unrepaired} this store cannot replace" if r.unrepaired else "")
    return wrap((text + "; `txpy fsck --remote NAME` checks all of it").split())


def names_line(lead: str, names: Iterable[str]) -> list[str]:
    """lead followed by names, wrapped between names."""
    return wrap(list(names), lead=lead, sep=",")
