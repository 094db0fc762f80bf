"""Where a study and its runs are stored, from a URL: Optuna storages - RDB (sqlite,
PostgreSQL, MySQL) or a journal file - and MLflow tracking stores.

Only the driver writes to the storage (ask/tell), so a trial still RUNNING when a study is
resumed was interrupted. A cluster's driver may live on any node, so give it a URL every
node can reach (PostgreSQL); sqlite and journal files are for one machine.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna

_RDB_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg", "postgresql+psycopg2", "mysql", "mysql+pymysql")


TRACKING_FILE = "mlflow.db"  # the work directory's default tracking store
TRACKING_SCHEMES = ("sqlite:///", "http://", "https://", "postgresql://", "postgresql+psycopg://", "postgresql+psycopg2://",
                    "mysql+pymysql://", "databricks")


def default_storage_url(workdir: Path) -> str:
    return f"sqlite:///{(workdir / 'optuna.db').resolve()}"


def default_tracking_uri(workdir: Path) -> str:
    return f"sqlite:///{(workdir / TRACKING_FILE).resolve()}"


def check_tracking_uri(uri: str) -> None:
    """Raise a one-line ValueError for a URI that cannot be a tracking store (syntax only)."""
    if not uri.startswith(TRACKING_SCHEMES):
        raise ValueError(f"tracking URI {uri!r} is invalid: expected sqlite:///FILE.db, http(s)://HOST:PORT, "
                         "postgresql://... or mysql+pymysql://...")
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).parent.is_dir():
        raise ValueError(f"tracking URI {uri!r} is invalid: its folder does not exist")


def check_storage_url(url: str) -> None:
    """Raise a one-line ValueError for a URL Optuna could not open, before anything is created."""
    scheme = url.split("://", 1)[0] if "://" in url else url.split(":", 1)[0]
    if url.startswith("journal:"):
        path = Path(url[len("journal:"):])
        if not path.name or not path.parent.exists():
            raise ValueError(f"storage {url!r} is invalid: the folder {str(path.parent)!r} of the journal file does not exist")
        return
    if "://" not in url or scheme not in _RDB_SCHEMES:
        raise ValueError(
            f"storage {url!r} is invalid: expected sqlite:///FILE, postgresql://USER@HOST/DB, mysql://... or journal:FILE"
        )
    if scheme == "sqlite":
        path = Path(url[len("sqlite:///"):])
        if not url.startswith("sqlite:///") or not path.name:
            raise ValueError(f"storage {url!r} is invalid: expected sqlite:///PATH/TO/FILE.db")
        if not path.parent.exists():
            raise ValueError(f"storage {url!r} is invalid: the folder {str(path.parent)!r} does not exist")


def storage_file(url: str) -> Path | None:
    """The file a sqlite or journal storage lives in (None for a database server)."""
    if url.startswith("journal:"):
        return Path(url[len("journal:"):])
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):])
    return None


def check_storage_file(url: str) -> None:
    """A sqlite or journal file that exists must be one, and whole: a folder, a FIFO, a file
    of another kind or a damaged one is a one-line ValueError that says what can help. Found
    by reading alone (sqlite opened read-only), so a refusal changes nothing."""
    path = storage_file(url)
    if path is None or not path.exists():
        return
    kind = "journal" if url.startswith("journal:") else "SQLite"
    if path.is_dir():
        raise ValueError(f"storage {url!r} is a folder: expected a {kind} file")
    if not path.is_file():
        raise ValueError(f"storage {url!r} is not a regular file (a FIFO, socket or device): expected a {kind} file")
    if kind == "SQLite":
        _check_sqlite(url, path)
    else:
        _check_journal(url, path)


def _check_sqlite(url: str, path: Path) -> None:
    import contextlib
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            verdict = db.execute("PRAGMA quick_check").fetchone()[0]
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as error:
        verdict, tables = str(error), set()
    if verdict != "ok":
        raise ValueError(f"storage {url!r} is damaged: {str(path)!r} is not a whole SQLite database ({verdict}); "
                         f"nothing was changed: restore it from a backup, or save what SQLite can still read with "
                         f"'sqlite3 {path} .recover | sqlite3 {path.with_name(path.stem + '-recovered.db')}'")
    if tables and "studies" not in tables:
        raise ValueError(f"storage {url!r}: {str(path)!r} is a SQLite database but not an Optuna storage "
                         f"(it has no 'studies' table)")


def _check_journal(url: str, path: Path) -> None:
    """Every complete line a JSON record (a last line without its newline is a write the
    journal's reader itself skips)."""
    from litv2.files import json_lines

    for number, complete, record, why in json_lines(path):
        if not complete:
            break
        if not isinstance(record, dict):
            kept = (f" (a journal only grows: its first {number - 1} lines are the study as it was up to then)"
                    if number > 1 else "")
            raise ValueError(f"storage {url!r} is damaged: line {number} of {str(path)!r} is not a journal record "
                             f"({why or 'not a record'}); nothing was changed: restore the file from a backup{kept}")


def open_existing_storage(url: str) -> "optuna.storages.BaseStorage":
    """The storage at ``url`` for reading a study: a file storage that does not exist is a
    one-line ValueError, never a new empty file (``status``, ``front``, ``resume``); a
    damaged one is refused before Optuna opens it (:func:`check_storage_file`)."""
    check_storage_url(url)
    check_storage_file(url)
    path = storage_file(url)
    if path is not None and not path.is_file():
        raise ValueError(f"storage {url!r} holds no studies: the file {str(path)!r} does not exist")
    return open_storage(url, existing=True)


def open_storage(url: str, existing: bool = False) -> "optuna.storages.BaseStorage":
    """An Optuna storage for ``url`` (validated by :func:`check_storage_url`).

    sqlite files run in write-ahead-log mode with ``synchronous=NORMAL``: every trial
    attribute is a transaction, and the default rollback journal fsyncs each one (8 ms
    apiece here, more than the driver's own work per trial). WAL stays safe against a
    crash of the driver; only a power loss may drop the last transactions.
    """
    import optuna

    check_storage_url(url)
    if url.startswith("journal:"):
        backend = optuna.storages.journal.JournalFileBackend(url[len("journal:"):])
        return optuna.storages.JournalStorage(backend)
    # SQLAlchemy's default MySQL driver (mysqlclient) needs a C library; the [mysql] extra installs PyMySQL.
    # An ``existing`` database is read as it is: neither its tables nor their schema version are
    # touched, which also spares the import of alembic (~2 s of ``status`` and ``front``).
    storage = optuna.storages.RDBStorage("mysql+pymysql://" + url[len("mysql://"):] if url.startswith("mysql://")
                                         else url, skip_compatibility_check=existing, skip_table_creation=existing)
    if url.startswith("sqlite"):
        import sqlalchemy

        def _pragmas(connection, _record) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        sqlalchemy.event.listen(storage.engine, "connect", _pragmas)
        storage.engine.dispose()  # connections made before the listener reconnect with it
    return storage
