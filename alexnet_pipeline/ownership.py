"""Which folders a run may write into: its own, and no other.

    from alexnet_pipeline.ownership import RunIdentity, claim_run_folder
    claim_run_folder(run_dir, RunIdentity.of(cfg, dataset_key))   # ConfigError, or run_dir is now ours

A run folder carries RUN_DIR/.alexnet-run.json (the run marker: format,
config, its fingerprint, the data's key, when and where it was made), written
before anything else when a run takes a new or empty folder. Before a run
writes, deletes or locks anything, the folder is checked:

- the filesystem root, the home folder, the current folder and the runs root
  are never run folders, nor is any folder inside a run folder;
- a folder that exists, is not empty and has no marker is refused, unless it
  is a run folder from before markers: only the pipeline's own file names,
  and checkpoints that say which run they belong to (it is then adopted);
- a folder holding anything the pipeline does not write is refused, marker or
  not (a marker copied elsewhere does not make a folder ours);
- which run a folder holds is read from every record that survived: the
  marker, checkpoints/resume.pt and every checkpoints/alexnet-NN.pt. Any one
  of them naming another config or other data refuses the run, so deleting or
  truncating one file (or all but one) never lets a run overwrite another's.

A sweep folder carries .alexnet-sweep.json and holds sweep.csv, sweep.png
and its trials' run folders.

Every refusal is a ConfigError (exit status 2) that says what was found,
where, and what to do; nothing has been written or deleted when it is raised.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from alexnet_pipeline.config import PipelineConfig, results_part, runs_root
from alexnet_pipeline.record import RECORD_NAME
from alexnet_pipeline.errors import ConfigError
from alexnet_pipeline.files import atomic_write_text, create_text_exclusively

log = logging.getLogger(__name__)

RUN_MARKER = ".alexnet-run.json"
SWEEP_MARKER = ".alexnet-sweep.json"
RUN_FORMAT = "alexnet-pipeline-run/1"
SWEEP_FORMAT = "alexnet-pipeline-sweep/1"
LOCK_NAME = ".lock"
CHECKPOINT_DIR = "checkpoints"
# What a run writes at the top of its folder (tasks/report.py) and what a sweep writes into its own.
REPORT_FILES = ("accuracy.csv", "accuracy.png", "confusion.png", "report.md")
SWEEP_FILES = ("sweep.csv", "sweep.png", "sweep_seeds.csv")
_CHECKPOINT_FILE = re.compile(r"alexnet-\d+\.pt|resume\.pt")
# Everything training writes into checkpoints/: also each checkpoint's
# recorded hash and the resume state of an epoch being committed.
_CHECKPOINT_FOLDER_FILE = re.compile(r"alexnet-\d+\.pt|\.alexnet-\d+\.pt\.sha256|resume\.pt(\.next)?")
# files.atomic_path's temporary names: ".<final name>.<random>.partial".
_PARTIAL = re.compile(r"\.(.+)\.[A-Za-z0-9_]+\.partial")


def _nfs_leftover(name: str) -> bool:
    # An NFS client renames a file that is deleted or replaced while still
    # open or memory-mapped to .nfsXXXX until the last user closes it.
    return name.startswith(".nfs")


def _known_name(name: str, is_known) -> bool:
    """`name` is a file the pipeline writes (is_known(name)), a temporary
    file of one, or an NFS leftover."""
    partial = _PARTIAL.fullmatch(name)
    return _nfs_leftover(name) or bool(is_known(partial.group(1) if partial else name))


def _listing(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _entry_name(path: Path) -> str:
    return path.name + ("/" if path.is_dir() and not path.is_symlink() else "")


# --- which run a folder holds --------------------------------------------------------------


def _comparable(config: dict) -> dict:
    """The part of a config that changes results (as PipelineConfig.fingerprint
    counts it, less the --weights file's content, which a config dict alone
    does not know)."""
    return results_part(config)


@dataclass(frozen=True)
class RunIdentity:
    """Which run a folder holds: its config (PipelineConfig.to_dict()), the
    key of the preprocessed data and the config's fingerprint. `config` None:
    unknown (a folder claimed without saying which run, by library callers)."""

    config: dict | None
    dataset_key: str | None = None
    fingerprint: str | None = None

    @classmethod
    def of(cls, cfg: PipelineConfig, dataset_key: str | None) -> RunIdentity:
        return cls(cfg.to_dict(), dataset_key, cfg.fingerprint())

    @classmethod
    def from_record(cls, record: dict) -> RunIdentity:
        """From a marker, a checkpoint's metadata, resume.pt or describe_checkpoint's dict."""
        config = record.get("config")
        return cls(config if isinstance(config, dict) else None, record.get("dataset_key"),
                   record.get("config_fingerprint"))

    def differs_from(self, other: RunIdentity) -> bool:
        if self.config is None or other.config is None:
            return False
        if self.dataset_key and other.dataset_key and self.dataset_key != other.dataset_key:
            return True
        if self.fingerprint and other.fingerprint:
            return self.fingerprint != other.fingerprint
        # Checkpoints from before fingerprints were recorded: compare what they do record.
        return _comparable(self.config) != _comparable(other.config)


def what_differs(there: RunIdentity, now: RunIdentity) -> str:
    """'a different train.epochs (1 there, 2 now)', for a refusal message."""
    if there.dataset_key and now.dataset_key and there.dataset_key != now.dataset_key:
        return "different data (the images' content differs)"
    if there.config is None or now.config is None:
        return "a different configuration"
    saved, current = _comparable(there.config), _comparable(now.config)
    changed = [f"{section}.{key} ({saved.get(section, {}).get(key)!r} there, {value!r} now)"
               for section, fields in current.items() if isinstance(fields, dict)
               for key, value in fields.items() if saved.get(section, {}).get(key) != value]
    if not changed:
        return "other starting weights (the --weights file's content differs)"
    return "a different " + ", ".join(changed)


def read_run_marker(run_dir: str | Path) -> RunIdentity | None:
    """The identity the run marker records, or None when there is no marker
    or it cannot be read (truncated, edited, another format)."""
    try:
        record = json.loads((Path(run_dir) / RUN_MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != RUN_FORMAT:
        return None
    return RunIdentity.from_record(record)


def _records(run_dir: Path) -> list[tuple[str, RunIdentity]]:
    """(where, identity) of every readable record of which run the folder
    holds: the marker, resume.pt, each epoch checkpoint. Unreadable ones
    (damaged files: training redoes them) say nothing and are left out."""
    from alexnet_pipeline.checkpoint import RESUME_NAME, list_checkpoints, read_run_record

    found = []
    marker = read_run_marker(run_dir)
    if marker is not None and marker.config is not None:
        found.append((RUN_MARKER, marker))
    checkpoint_dir = run_dir / CHECKPOINT_DIR
    for path in [checkpoint_dir / RESUME_NAME, *list_checkpoints(checkpoint_dir)]:
        record = read_run_record(path) if path.is_file() else None
        if record is not None and isinstance(record.get("config"), dict):
            found.append((f"{CHECKPOINT_DIR}/{path.name}", RunIdentity.from_record(record)))
    return found


def _check_records(run_dir: Path, identity: RunIdentity | None) -> list[tuple[str, RunIdentity]]:
    records = _records(run_dir)
    if identity is not None and identity.config is not None:
        for where, recorded in records:
            if recorded.differs_from(identity):
                raise ConfigError(
                    f"{run_dir} holds a run with {what_differs(recorded, identity)}, according to {where}; "
                    "pass another --out, or delete that folder to start over"
                )
        return records
    for where, recorded in records[1:]:
        if recorded.differs_from(records[0][1]):
            raise ConfigError(
                f"{run_dir} holds records of different runs: {where} has {what_differs(recorded, records[0][1])} "
                f"than {records[0][0]}; delete the files that do not belong, or the folder, before writing to it"
            )
    return records


# --- what a folder holds ------------------------------------------------------------------


def _special_folder(folder: Path) -> str | None:
    """What `folder` is, if it is a folder no run may take as its own."""
    candidates = [(Path("/"), "the filesystem root")]
    with contextlib.suppress(RuntimeError, KeyError, OSError):
        candidates.append((Path.home(), "your home folder"))
    with contextlib.suppress(OSError):
        candidates.append((Path.cwd(), "the current folder"))
    candidates.append((runs_root(), "the runs root (it holds every default run folder)"))
    for path, what in candidates:
        if os.path.realpath(path) == str(folder):
            return what
    return None


def _enclosing_run_folder(folder: Path) -> Path | None:
    for parent in folder.parents:
        if (parent / RUN_MARKER).exists():
            return parent
    return None


def _check_place(path: Path, real: Path, kind: str) -> None:
    """Refusals that do not depend on what the folder holds."""
    special = _special_folder(real)
    if special:
        raise ConfigError(
            f"out: {path} is {special}, not a {kind} folder: a {kind} writes its files straight into the folder "
            f"it is given. Pass a new folder as --out (one that does not exist yet, e.g. {path / f'alexnet-{kind}'}), "
            "or leave --out out to use runs/<name>; nothing was written."
        )
    enclosing = _enclosing_run_folder(real)
    if enclosing is not None:
        raise ConfigError(
            f"out: {path} is inside the run folder {enclosing}, which holds one run and nothing else; "
            "pass a folder outside it as --out; nothing was written."
        )
    if real.exists() and not real.is_dir():
        raise ConfigError(f"out: cannot create the {kind} folder {path}: a file of that name exists; "
                          "pass another --out")
    if real.is_dir() and not os.access(real, os.W_OK | os.X_OK):
        raise ConfigError(f"out: this user may not write into the {kind} folder {path}; fix its permissions "
                          "or pass another --out; nothing was written.")


def _entries(path: Path, real: Path) -> list[Path]:
    """What the folder holds (NFS leftovers aside); [] if it does not exist."""
    if not real.exists():
        return []
    try:
        return [e for e in real.iterdir() if not _nfs_leftover(e.name)]
    except OSError as exc:
        raise ConfigError(f"out: cannot read the folder {path} ({exc.strerror}); pass another --out") from None


def _unknown_in_run_folder(real: Path) -> list[str]:
    """Entries of a run folder that a run does not write, as 'name' or 'checkpoints/name'."""
    unknown = []
    for entry in sorted(real.iterdir()):
        if entry.name == CHECKPOINT_DIR and entry.is_dir():  # a link to a folder elsewhere counts too
            unknown += [f"{CHECKPOINT_DIR}/{_entry_name(e)}" for e in sorted(entry.iterdir())
                        if e.is_dir() or not _known_name(e.name, _CHECKPOINT_FOLDER_FILE.fullmatch)]
        elif entry.is_dir() or not _known_name(entry.name, {RUN_MARKER, LOCK_NAME, RECORD_NAME, *REPORT_FILES}.__contains__):
            unknown.append(_entry_name(entry))
    return unknown


def _has_checkpoint_files(real: Path) -> bool:
    folder = real / CHECKPOINT_DIR
    return folder.is_dir() and any(_CHECKPOINT_FILE.fullmatch(p.name) for p in folder.iterdir())


def check_run_folder_layout(run_dir: str | Path) -> str:
    """Raise ConfigError if run_dir is no place for a run's files, judged by
    where it is and which files it holds (reads nothing but names). Returns
    "new" (does not exist), "empty", "marked" (carries the run marker) or
    "unmarked" (a run folder from before markers: only the pipeline's files,
    checkpoints among them; their records then decide)."""
    path = Path(run_dir).expanduser()
    real = Path(os.path.realpath(path))
    _check_place(path, real, "run")
    if not real.exists():
        return "new"
    entries = _entries(path, real)
    if not entries:
        return "empty"
    if (real / SWEEP_MARKER).exists():
        raise ConfigError(f"out: {path} is a sweep folder (it holds {SWEEP_MARKER}); its trials are the run folders "
                          "inside it. Pass another --out for a run of its own; nothing was written.")
    unknown = _unknown_in_run_folder(real)
    if (real / RUN_MARKER).exists():
        if unknown:
            raise ConfigError(
                f"out: {path} is a run folder but also holds files a run does not write ({_listing(unknown)}); "
                "a run folder holds only what the pipeline writes. Move those elsewhere, or pass another --out; "
                "nothing was written."
            )
        return "marked"
    if unknown:
        raise ConfigError(
            f"out: {path} already exists and was not made by a run of this pipeline (it has no {RUN_MARKER}); "
            f"it holds {_listing(sorted(_entry_name(e) for e in entries))}. A run writes {', '.join(REPORT_FILES)} and {CHECKPOINT_DIR}/ into its "
            "folder and would overwrite files of those names. Pass a new or empty folder as --out (or leave "
            "--out out to use runs/<name>); nothing was written."
        )
    if not _has_checkpoint_files(real):
        names = sorted(_entry_name(e) for e in entries)
        raise ConfigError(
            f"out: {path} holds {_listing(names)} but no {RUN_MARKER} and no checkpoint that says which run it "
            "belongs to, so it cannot be told from a folder of yours. If it is what is left of a run of this "
            "pipeline, delete it to start over; otherwise pass another --out; nothing was written."
        )
    return "unmarked"


# --- taking a folder ------------------------------------------------------------------------


def _marker_text(identity: RunIdentity | None) -> str:
    identity = identity or RunIdentity(None)
    return json.dumps({
        "format": RUN_FORMAT,
        "config_fingerprint": identity.fingerprint,
        "dataset_key": identity.dataset_key,
        "config": identity.config,
        "created": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }, indent=1) + "\n"


def mark_new_run_folder(run_dir: str | Path, identity: RunIdentity | None) -> bool:
    """Write the run marker into run_dir (which exists and was found new or
    empty) unless one is there by now; True if this call wrote it. Of two
    runs racing for one new folder exactly one writes it; the other then
    finds it and is judged by it."""
    return create_text_exclusively(Path(run_dir) / RUN_MARKER, _marker_text(identity))


def _inspect(run_dir: Path, identity: RunIdentity | None) -> tuple[str, list[tuple[str, RunIdentity]]]:
    state = check_run_folder_layout(run_dir)
    if state in ("new", "empty"):
        return state, []
    records = _check_records(run_dir, identity)
    if not records and read_run_marker(run_dir) is None:
        content = [n for n in os.listdir(run_dir) if n not in (RUN_MARKER, LOCK_NAME) and not _nfs_leftover(n)]
        if content:
            missing = f"a damaged {RUN_MARKER}" if state == "marked" else f"no {RUN_MARKER}"
            raise ConfigError(
                f"out: {run_dir} has {missing} and none of its checkpoints can be read to tell which run it "
                f"holds ({_listing(sorted(content))}); delete it to start over, or pass another --out; "
                "nothing was written."
            )
    return state, records


def check_run_folder(run_dir: str | Path, identity: RunIdentity | None = None) -> str:
    """Raise ConfigError unless run_dir may hold the run `identity` describes:
    check_run_folder_layout, then every record in it (marker, resume.pt,
    every checkpoint) agrees with `identity`, and a folder without a
    readable marker must have a readable checkpoint that says which run it
    holds. Reads only; returns check_run_folder_layout's verdict."""
    return _inspect(Path(run_dir).expanduser(), identity)[0]


def claim_run_folder(run_dir: str | Path, identity: RunIdentity | None) -> bool:
    """check_run_folder, then create run_dir if needed and write its marker
    if it has none (a new, empty or adopted folder), one that cannot be read,
    or one that does not say which run (replaced by one that does). Returns
    True if this call wrote the marker."""
    run_dir = Path(run_dir).expanduser()
    state, records = _inspect(run_dir, identity)
    marker = read_run_marker(run_dir)
    if marker is not None and (marker.config is not None or identity is None or identity.config is None):
        return False
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"out: cannot create the run folder {run_dir} ({exc.strerror}); pass another --out") from None
    if state == "unmarked":
        log.info("Taking over %s: a run folder from before run markers whose checkpoints record this run", run_dir)
    held = identity if identity is not None and identity.config is not None else (records[0][1] if records else None)
    atomic_write_text(run_dir / RUN_MARKER, _marker_text(held))
    return True


def release_unused_run_folder(run_dir: str | Path) -> None:
    """Remove the run marker if it is all the folder holds (besides the lock
    and NFS leftovers): a run that wrote it and then wrote nothing else
    leaves no trace. Call only when this run wrote the marker."""
    run_dir = Path(run_dir)
    with contextlib.suppress(OSError):
        rest = [n for n in os.listdir(run_dir) if n not in (RUN_MARKER, LOCK_NAME) and not _nfs_leftover(n)]
        if not rest:
            (run_dir / RUN_MARKER).unlink(missing_ok=True)


# --- sweep folders --------------------------------------------------------------------------


def _is_run_folder(folder: Path) -> bool:
    """Empty, or holding a run marker or checkpoints (a run folder from before markers)."""
    return folder.is_dir() and (not any(folder.iterdir()) or (folder / RUN_MARKER).exists()
                                or _has_checkpoint_files(folder))


def claim_sweep_folder(sweep_dir: str | Path) -> None:
    """Check that sweep_dir may take a sweep's files (sweep.csv, sweep.png and
    the trials' run folders), create it and write its marker if it has none.
    Refused like a run folder: the root, home, current folder and runs root,
    anything inside a run folder, a run folder, and an existing folder
    without the sweep marker unless it holds only what a sweep writes (a
    sweep folder from before markers, with at least one trial's run folder)."""
    path = Path(sweep_dir).expanduser()
    real = Path(os.path.realpath(path))
    _check_place(path, real, "sweep")
    entries = _entries(path, real)
    if entries:
        if (real / RUN_MARKER).exists():
            raise ConfigError(f"out: {path} is a run folder (it holds {RUN_MARKER}), not a sweep folder; "
                              "pass another --out for the sweep; nothing was written.")
        sweep_file = {SWEEP_MARKER, *SWEEP_FILES}.__contains__
        unknown = [_entry_name(e) for e in sorted(entries)
                   if not (_is_run_folder(e) or (e.is_file() and _known_name(e.name, sweep_file)))]
        marked = (real / SWEEP_MARKER).exists()
        if unknown:
            what = "is a sweep folder but also holds" if marked else \
                f"already exists and was not made by a sweep of this pipeline (it has no {SWEEP_MARKER}); it holds"
            raise ConfigError(
                f"out: {path} {what} {_listing(unknown)}. A sweep writes {', '.join(SWEEP_FILES)} and one run "
                "folder per trial there. Pass a new or empty folder as --out; nothing was written."
            )
        if not marked and not any(e.is_dir() and any(e.iterdir()) for e in entries):
            raise ConfigError(
                f"out: {path} holds {_listing(sorted(_entry_name(e) for e in entries))} but no {SWEEP_MARKER} and "
                "no trial's run folder, so it cannot be told from a folder of yours. If it is what is left of a "
                "sweep, delete it to start over; otherwise pass another --out; nothing was written."
            )
        if marked:
            return
    try:
        real.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"out: cannot create the sweep folder {path} ({exc.strerror}); pass another --out") from None
    create_text_exclusively(real / SWEEP_MARKER, json.dumps({
        "format": SWEEP_FORMAT, "created": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "host": socket.gethostname(), "pid": os.getpid()}, indent=1) + "\n")

