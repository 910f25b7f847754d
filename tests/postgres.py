"""A throwaway PostgreSQL server for the tests: initdb + pg_ctl in a temporary folder, on
127.0.0.1 and a free port, with a password (so tests can check it never leaks)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

PASSWORD = "pg-" + uuid.uuid4().hex[:12]
USER = "saesweep"


def find_bin(name: str) -> str | None:
    """A PostgreSQL server binary: on PATH, else Debian's /usr/lib/postgresql/<v>/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


@dataclass
class PostgresServer:
    """A running server; `url(db)` gives a SQLAlchemy URL to one of its databases."""

    folder: Path
    port: int
    run_as: list[str]
    pg_ctl: str

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        subprocess.run([*self.run_as, self.pg_ctl, "-D", str(self.folder / "data"), "-m",
                        "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.folder, ignore_errors=True)


def start_server() -> PostgresServer | str:
    """Start a server, or return why none can be started here."""
    initdb, pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        return "no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "no PostgreSQL driver: pip install -e '.[postgres]'"
    folder = Path(tempfile.mkdtemp(prefix="saesweep-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: run it as its own user
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as"
        os.chown(folder, owner.pw_uid, owner.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
        os.chmod(folder, 0o755)
    pwfile = folder / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if run_as:
        os.chown(pwfile, pwd.getpwnam("postgres").pw_uid, -1)
    data = folder / "data"
    init = subprocess.run([*run_as, initdb, "-D", str(data), "-U", USER, f"--pwfile={pwfile}",
                           "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8"],
                          capture_output=True, text=True, timeout=120)
    if init.returncode != 0:
        return f"initdb failed: {init.stderr.strip()[-300:]}"
    port = _free_port()
    start = subprocess.run([*run_as, pg_ctl, "-D", str(data), "-l", str(folder / "log"), "-w",
                            "-t", "60", "-o",
                            f"-p {port} -c listen_addresses=127.0.0.1 -k {folder} "
                            "-c max_connections=200 -c fsync=off", "start"],
                           capture_output=True, text=True, timeout=120)
    if start.returncode != 0:
        log = (folder / "log").read_text() if (folder / "log").exists() else ""
        return f"pg_ctl start failed: {start.stderr.strip()[-300:]} {log[-300:]}"
    return PostgresServer(folder=folder, port=port, run_as=run_as, pg_ctl=pg_ctl)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
