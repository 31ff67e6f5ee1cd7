"""``--web-config FILE``: TLS and basic authentication for the exporter.

The file has the format of the web configuration file of Prometheus exporters
(the exporter-toolkit format), a YAML document; kvmstat reads this subset::

    tls_server_config:
      cert_file: server.crt          # PEM certificate (chain); required with TLS
      key_file: server.key           # its PEM private key
      client_ca_file: clients.pem    # optional: CAs for client certificates
      client_auth_type: RequireAndVerifyClientCert   # or NoClientCert (default)
      min_version: TLS12             # optional: TLS10..TLS13
    basic_auth_users:
      prometheus: $2y$10$...         # bcrypt hash of the password

Relative paths are relative to the file's directory.  Any other key is an
error, so a typo cannot silently leave the exporter open.  Reading YAML needs
PyYAML and checking passwords needs bcrypt (``pip install 'kvmstat[web]'``).
TLS is Python's ``ssl`` module, as in prometheus_client's own server.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import ssl
import threading
from dataclasses import dataclass, field
from typing import Dict, Optional

from ..errors import InvalidArgument, NotAvailable

__all__ = ["WebConfig", "load_web_config"]

_TLS_KEYS = {"cert_file", "key_file", "client_ca_file", "client_auth_type", "min_version",
             "max_version"}
_CLIENT_AUTH = {"NoClientCert": False, "RequireAndVerifyClientCert": True}
_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
             "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}


@dataclass
class WebConfig:
    """What the web configuration file asks for: a TLS context (None: plain HTTP)
    and basic-authentication users (name -> bcrypt hash; empty: no authentication)."""

    tls: Optional[ssl.SSLContext] = None
    users: Dict[str, bytes] = field(default_factory=dict)
    _verified: Dict[str, bytes] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def authorized(self, header: Optional[str]) -> bool:
        """True if no users are configured or *header* (the ``Authorization``
        request header) carries a configured user and the right password.

        bcrypt is slow on purpose (tens of milliseconds): a password that checked
        once is remembered as a salted digest, so scrapes every few seconds stay cheap.
        """
        if not self.users:
            return True
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, sep, password = base64.b64decode(header[6:], validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        if not sep:
            return False
        hashed = self.users.get(user.decode("utf-8", "replace"))
        if hashed is None:
            return False
        digest = hashlib.sha256(hashed + b"\0" + password).digest()
        with self._lock:
            remembered = self._verified.get(user.decode("utf-8", "replace"))
        if remembered is not None and hmac.compare_digest(remembered, digest):
            return True
        import bcrypt  # checked when the file was loaded

        try:
            ok = bcrypt.checkpw(password, hashed)
        except ValueError:
            return False
        if ok:
            with self._lock:
                self._verified[user.decode("utf-8", "replace")] = digest
        return ok


def _bad(path: str, what: str) -> InvalidArgument:
    return InvalidArgument(f"--web-config {path}: {what}")


def _path(path: str, base: str, value: object, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise _bad(path, f"tls_server_config.{key} must be a file name")
    full = value if os.path.isabs(value) else os.path.join(base, value)
    if not os.path.isfile(full):
        raise _bad(path, f"tls_server_config.{key}: {value}: no such file")
    return full


def _tls_context(path: str, base: str, tls: object) -> ssl.SSLContext:
    if not isinstance(tls, dict):
        raise _bad(path, "tls_server_config must be a mapping")
    unknown = set(tls) - _TLS_KEYS
    if unknown:
        raise _bad(path, f"unknown key tls_server_config.{sorted(map(str, unknown))[0]}")
    if "cert_file" not in tls or "key_file" not in tls:
        raise _bad(path, "tls_server_config needs both cert_file and key_file")
    cert = _path(path, base, tls["cert_file"], "cert_file")
    key = _path(path, base, tls["key_file"], "key_file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    for bound in ("min_version", "max_version"):
        if bound in tls:
            version = _VERSIONS.get(tls[bound]) if isinstance(tls[bound], str) else None
            if version is None:
                raise _bad(path, f"tls_server_config.{bound} must be one of "
                                 f"{', '.join(_VERSIONS)}")
            if bound == "min_version":
                context.minimum_version = version
            else:
                context.maximum_version = version
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise _bad(path, f"cannot use the certificate {tls['cert_file']} with the key "
                         f"{tls['key_file']}: {getattr(exc, 'reason', None) or exc}") from None
    auth = tls.get("client_auth_type", "NoClientCert")
    if auth not in _CLIENT_AUTH:
        raise _bad(path, f"tls_server_config.client_auth_type must be one of "
                         f"{', '.join(_CLIENT_AUTH)}")
    if _CLIENT_AUTH[auth]:
        if "client_ca_file" not in tls:
            raise _bad(path, f"client_auth_type {auth} needs client_ca_file")
        try:
            context.load_verify_locations(_path(path, base, tls["client_ca_file"],
                                                "client_ca_file"))
        except (ssl.SSLError, OSError) as exc:
            raise _bad(path, f"cannot read client_ca_file: {exc}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _users(path: str, users: object) -> Dict[str, bytes]:
    if not isinstance(users, dict):
        raise _bad(path, "basic_auth_users must be a mapping of user names to bcrypt hashes")
    try:
        import bcrypt  # noqa: F401  (needed to check passwords)
    except ImportError:
        raise NotAvailable(f"--web-config {path}: basic_auth_users needs the bcrypt module "
                           f"(pip install 'kvmstat[web]')") from None
    out = {}
    for user, hashed in users.items():
        if not isinstance(user, str) or not user or ":" in user:
            raise _bad(path, f"basic_auth_users: {user!r} is not a user name")
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")) \
                or len(hashed) != 60:
            raise _bad(path, f"basic_auth_users.{user}: not a bcrypt hash "
                             f"(e.g. from htpasswd -nBC 10 {user})")
        out[user] = hashed.encode()
    return out


def load_web_config(path: str) -> WebConfig:
    """Read *path*; raises :class:`InvalidArgument` (one line) for anything wrong."""
    try:
        import yaml
    except ImportError:
        raise NotAvailable(f"--web-config {path}: reading it needs the PyYAML module "
                           f"(pip install 'kvmstat[web]')") from None
    try:
        with open(path, encoding="utf-8") as stream:
            document = yaml.safe_load(stream)
    except OSError as exc:
        raise _bad(path, exc.strerror or str(exc)) from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise _bad(path, f"not valid YAML{where}: {problem}") from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise _bad(path, "the file must be a YAML mapping (tls_server_config, basic_auth_users)")
    unknown = set(document) - {"tls_server_config", "basic_auth_users"}
    if unknown:
        raise _bad(path, f"unknown key {sorted(map(str, unknown))[0]} (kvmstat reads "
                         f"tls_server_config and basic_auth_users)")
    base = os.path.dirname(os.path.abspath(path))
    config = WebConfig()
    if document.get("tls_server_config") is not None:
        config.tls = _tls_context(path, base, document["tls_server_config"])
    if document.get("basic_auth_users") is not None:
        config.users = _users(path, document["basic_auth_users"])
    return config
