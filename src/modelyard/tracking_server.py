"""``modelyard tracking server``: MLflow's tracking server with its basic-auth app, safe by default.

``mlflow server`` on its own has no authentication: anyone who reaches the port can read every
run, delete experiments and move the registry's ``champion`` alias. MLflow's ``basic-auth`` app adds
users and per-experiment/per-model permissions, but it is configured through an ini file and the
admin account is created from whatever password is configured at first start; older MLflow
versions shipped ``password1234`` as that password. This command starts the same server with:

- the basic-auth app always on (``--app-name basic-auth``), its ini file written for this start
  (readable by the owner only, removed at exit) and pointed to by ``MLFLOW_AUTH_CONFIG_PATH``;
- the admin password from a secret file (``--admin_password_file``) or ``MLFLOW_AUTH_ADMIN_PASSWORD``,
  refused when missing, empty, MLflow's old default, or shorter than MLflow's 12-character minimum,
  whatever MLflow version is installed;
- a random CSRF signing key (``MLFLOW_FLASK_SERVER_SECRET_KEY``) unless one is set;
- 127.0.0.1 as the default address: basic auth sends the password with every request, so a
  non-loopback address belongs behind a TLS-terminating proxy (docs/access.md).

Clients authenticate with ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import secrets
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from jsonargparse import ArgumentParser

from modelyard.config import config_parser, group_parser, parse_config
from modelyard.errors import ModelyardError

__all__ = ["DEFAULT_MLFLOW_PASSWORD", "TrackingServerConfig", "TrackingServerError", "admin_credentials",
           "auth_ini", "main", "server_command"]

logger = logging.getLogger(__name__)

# The admin password that MLflow < 3.x wrote into its shipped basic_auth.ini (GHSA-gq3w-7jj3-x7gr).
DEFAULT_MLFLOW_PASSWORD = "password1234"
MIN_PASSWORD_LENGTH = 12  # MLflow's own password policy (mlflow.utils.validation._validate_password)
PERMISSIONS = ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


class TrackingServerError(ModelyardError):
    """The tracking server was not started: a missing or unsafe setting, named with how to fix it."""


@dataclass
class TrackingServerConfig:
    """Where the tracking server listens, what it stores, and who may use it.

    Attributes:
        host: address to bind. 127.0.0.1 by default; anything else should sit behind a TLS proxy,
            since basic auth sends the password with every request.
        port: HTTP port.
        backend_store_uri: runs, metrics and the model registry (SQLAlchemy URI; a database server
            for more than one machine).
        artifacts_destination: where proxied artifacts are stored (local path, s3://, gs://, ...);
            clients upload and download through the server, with the same credentials.
        auth_db_uri: the basic-auth app's users and permissions database.
        default_permission: what every authenticated user may do on experiments and models they
            were not granted anything on: READ, EDIT, MANAGE or NO_PERMISSIONS.
        admin_username: the admin account created at first start ($MLFLOW_AUTH_ADMIN_USERNAME wins).
        admin_password_file: a file holding the admin password (a mounted secret); without it the
            password comes from $MLFLOW_AUTH_ADMIN_PASSWORD. Used to create the admin at first start.
        workers: server worker processes.
        allowed_hosts: comma-separated Host header values the server accepts (MLflow's DNS-rebinding
            protection); None keeps MLflow's default (localhost and private addresses).
    """

    host: str = "127.0.0.1"
    port: int = 5000
    backend_store_uri: str = "sqlite:///mlflow.db"
    artifacts_destination: str = "./mlartifacts"
    auth_db_uri: str = "sqlite:///mlflow_auth.db"
    default_permission: str = "READ"
    admin_username: str = "admin"
    admin_password_file: str | None = None
    workers: int = 1
    allowed_hosts: str | None = None


def admin_credentials(cfg: TrackingServerConfig, environ: dict[str, str] | None = None) -> tuple[str, str]:
    """(username, password) of the admin account, or :class:`TrackingServerError` naming what to set."""
    env = os.environ if environ is None else environ
    username = env.get("MLFLOW_AUTH_ADMIN_USERNAME") or cfg.admin_username
    if not username:
        raise TrackingServerError("the admin username is empty; set --admin_username or MLFLOW_AUTH_ADMIN_USERNAME")
    if cfg.admin_password_file:
        path = Path(cfg.admin_password_file)
        if not path.is_file():
            raise TrackingServerError(f"--admin_password_file {str(path)!r} does not exist or is not a file")
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            logger.warning("%s is readable by other users (mode %o); `chmod 600` it", path,
                           stat.S_IMODE(path.stat().st_mode))
        password, source = path.read_text().strip("\r\n"), f"--admin_password_file {path}"
    else:
        password, source = env.get("MLFLOW_AUTH_ADMIN_PASSWORD", ""), "MLFLOW_AUTH_ADMIN_PASSWORD"
    fix = ("set MLFLOW_AUTH_ADMIN_PASSWORD or pass --admin_password_file with a file holding a strong password "
           "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(24))'`)")
    if not password:
        raise TrackingServerError(f"no admin password: {source} is empty or unset; {fix}")
    if password == DEFAULT_MLFLOW_PASSWORD:
        raise TrackingServerError(f"{source} is MLflow's publicly known default admin password "
                                  f"({DEFAULT_MLFLOW_PASSWORD!r}); refusing to start with it; {fix}")
    if "\n" in password or "\r" in password:
        raise TrackingServerError(f"{source} spans more than one line; the password must be a single line")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise TrackingServerError(f"{source} has {len(password)} characters; MLflow requires at least "
                                  f"{MIN_PASSWORD_LENGTH}; {fix}")
    return username, password


def auth_ini(cfg: TrackingServerConfig, username: str, password: str) -> str:
    """The basic-auth app's ini file for ``cfg``.

    The password is in the file as well as in the child's environment because MLflow 2.x reads it
    only from the file; MLflow 3.x prefers the environment variable, which holds the same value.
    """
    if cfg.default_permission not in PERMISSIONS:
        raise TrackingServerError(f"--default_permission {cfg.default_permission!r} is not one of "
                                  f"{', '.join(PERMISSIONS)}")
    return ("[mlflow]\n"
            f"default_permission = {cfg.default_permission}\n"
            f"database_uri = {cfg.auth_db_uri}\n"
            f"admin_username = {username}\n"
            f"admin_password = {password.replace('%', '%%')}\n"  # configparser interpolates '%'

            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")


def server_command(cfg: TrackingServerConfig) -> list[str]:
    """The ``mlflow server`` command line for ``cfg`` (basic-auth app, proxied artifacts)."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", "--host", cfg.host,
           "--port", str(cfg.port), "--workers", str(cfg.workers), "--backend-store-uri", cfg.backend_store_uri,
           "--serve-artifacts", "--artifacts-destination", cfg.artifacts_destination]
    if cfg.allowed_hosts:
        cmd += ["--allowed-hosts", cfg.allowed_hosts]
    return cmd


def run(cfg: TrackingServerConfig) -> int:
    """Check the settings, start ``mlflow server --app-name basic-auth`` and wait for it; its exit code.

    SIGINT/SIGTERM are passed on to the server's process group (the server and its workers).
    """
    if importlib.util.find_spec("flask_wtf") is None:
        raise TrackingServerError("MLflow's basic-auth app needs Flask-WTF, which is not installed; "
                                  "install it with `pip install 'mlflow[auth]'`")
    username, password = admin_credentials(cfg)
    ini_text = auth_ini(cfg, username, password)
    if cfg.host not in _LOOPBACK:
        logger.warning("binding %s: basic auth sends the password with every request, in clear text over plain "
                       "HTTP; put a TLS-terminating proxy in front and restrict who can reach port %d",
                       cfg.host, cfg.port)
    workdir = Path(tempfile.mkdtemp(prefix="modelyard-mlflow-auth-"))  # mode 0700
    ini = workdir / "basic_auth.ini"
    try:
        # Created 0600 before the secret is written, so it is never readable by others.
        ini.touch(mode=0o600)
        ini.write_text(ini_text)
        env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_AUTH_ADMIN_USERNAME": username,
               "MLFLOW_AUTH_ADMIN_PASSWORD": password}
        if not env.get("MLFLOW_FLASK_SERVER_SECRET_KEY"):
            # The auth app's CSRF protection signs with this key; the workers of one server inherit it.
            # Several servers behind one address must share one key: set it explicitly there.
            env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = secrets.token_urlsafe(32)
            logger.info("MLFLOW_FLASK_SERVER_SECRET_KEY not set: using a random key for this start")
        cmd = server_command(cfg)
        logger.info("MLflow tracking server with basic auth on http://%s:%d (admin %r, default permission %s); "
                    "clients set MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD",
                    cfg.host, cfg.port, username, cfg.default_permission)
        # Its own process group, so a stop reaches the workers it forks and nothing else.
        proc = subprocess.Popen(cmd, env=env, start_new_session=True)
        previous = {}

        def forward(signum: int, _frame) -> None:
            try:
                os.killpg(proc.pid, signum)
            except ProcessLookupError:
                pass

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, forward)
        try:
            return proc.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    finally:
        ini.unlink(missing_ok=True)
        workdir.rmdir()


DESCRIPTION = (
    "Run the MLflow tracking server with authentication (MLflow's basic-auth app): users and "
    "permissions, the admin created at first start from --admin_password_file or "
    "$MLFLOW_AUTH_ADMIN_PASSWORD (refused when empty, shorter than 12 characters or MLflow's old "
    "default 'password1234'), bound to 127.0.0.1 unless --host says otherwise; artifacts are proxied "
    "through the server. Clients: MLFLOW_TRACKING_URI=http://HOST:PORT plus MLFLOW_TRACKING_USERNAME and "
    "MLFLOW_TRACKING_PASSWORD. Add users with mlflow.server.auth.client.AuthServiceClient. "
    "Production settings: docs/access.md."
)


def build_parser() -> ArgumentParser:
    """The ``modelyard tracking server`` options."""
    return config_parser(TrackingServerConfig, "modelyard tracking server", DESCRIPTION)


def main(argv: Sequence[str]) -> int:
    """``modelyard tracking server [options]``."""
    args = list(argv)
    if not args or args[0] in ("-h", "--help") or args[0] != "server":
        group_parser("modelyard tracking", "The MLflow tracking server of modelyard.", {
            "server": ("the MLflow tracking server with authentication (basic-auth app), 127.0.0.1 by default",
                       build_parser())},
            "`modelyard tracking server --help` lists the options.").print_help()
        return 0 if args and args[0] in ("-h", "--help") else 2
    if "-h" in args or "--help" in args:
        build_parser().print_help()
        return 0
    return run(parse_config(TrackingServerConfig, args[1:], prog="modelyard tracking server", description=DESCRIPTION,
                            source="tracking server configuration"))
