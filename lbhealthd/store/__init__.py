"""What lbhealthd keeps in ``daemon.state_dir``, so that it survives restarts and SIGKILL.

Files (each whole-file document is ``{"version": 1, "<key>": ...}``):

    overrides.json   operators' manual overrides         {"version": 1, "overrides": [...]}
    owned.json       LB changes the daemon made itself   {"version": 1, "owned": [...]}
    engine.json      small named engine state blobs      {"version": 1, "blobs": {name: {...}}}
    actions.jsonl    append-only log, one JSON object per line, each with ``ts`` and ``time``
    lock             empty; ``fcntl.flock`` target that serialises every writer

Servers are written as ``POOL/SERVER``, enums by value, times as wall-clock seconds.

Writing. Every whole-file write goes to a temp file in the same directory, is flushed and
fsynced, then ``os.replace``-d over the old file, and the directory is fsynced; a crash at any
point leaves either the old or the new file, never a mix. Writers (the daemon and the on-call
CLI, in separate processes) hold an exclusive flock on ``lock`` for the whole
read-modify-write, so neither loses the other's update. Readers need no lock. A temp file
left by a crash is ignored by readers and removed when a Store is next created. Files are
created with mode 0o640, the directory with 0o750. An ``OSError`` while writing (a full
disk, a read-only mount) becomes a :class:`StateError` carrying the errno text, and the
previous file stays as it was.

Trust. Whoever may write the directory decides what lbhealthd does, so a directory another
user may write, or owned by another user, is refused; so is a state file that is a symlink, a
hard link, a FIFO or device, another user's, or far larger than lbhealthd writes. Files root
creates in the daemon user's directory are given to that user (see ``files``).

Corruption policy. A *missing* file means "nothing stored". A file that cannot be read, is
not JSON, has an unknown version, or holds an invalid entry (a bad server name, a wrong type,
an unknown or missing key) raises :class:`StateError` naming the file, the problem, and what
the operator can do. Nothing is ever silently dropped: losing an on-call engineer's override
without a word is worse than a daemon that refuses to start until someone has looked. The
action log is the one exception, being a record rather than state: a line that is not a
JSON object (typically the torn last line of a crash) is skipped and counted in
:attr:`ActionRecords.skipped_lines`, and the next append starts on a fresh line.

Modules: ``state_dir`` (the :class:`Store`), ``documents`` (versioned documents, atomic
replace), ``entries`` (overrides and ownership entries as JSON), ``actions`` (the action log),
``files`` (modes, durable writes, the writers' lock, OS error texts).
"""

from lbhealthd.store.actions import ACTIONS as ACTIONS
from lbhealthd.store.actions import ActionRecords
from lbhealthd.store.documents import ENGINE as ENGINE
from lbhealthd.store.documents import FORMAT_VERSION
from lbhealthd.store.documents import OVERRIDES as OVERRIDES
from lbhealthd.store.documents import OWNED as OWNED
from lbhealthd.store.entries import OwnedEntry
from lbhealthd.store.files import DIR_MODE as DIR_MODE
from lbhealthd.store.files import FILE_MODE as FILE_MODE
from lbhealthd.store.state_dir import LOCK as LOCK
from lbhealthd.store.state_dir import Store

# The file names and modes (imported "as" themselves) are reachable here too, outside the API,
# for code that looks at the state directory itself.
__all__ = ["FORMAT_VERSION", "ActionRecords", "OwnedEntry", "Store"]
