"""TLS contexts for every hop, built once at start from three PEM files.

One set of files per process serves both of its roles: a server's certificate is also
the certificate it presents when it calls out (a node registering with a coordinator,
a coordinator calling its nodes), and its CA both checks the clients that call in and
the servers it calls. So a cluster is TLS on every hop or on none.

- server: `cert` + `key` serve TLS; `ca` as well requires client certificates signed
  by it (mutual TLS).
- client: TLS when any file is given; the server is verified against `ca` (the system's
  trust store without it), chain and name: the address's host, an IP such as 127.0.0.1
  or a DNS name, must be in the certificate's subjectAltName. `cert` + `key` are
  presented when given.

TLS 1.2 is the minimum. A bad file is a TlsConfigError with a one-line message.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path


class TlsConfigError(ValueError):
    """The TLS files given cannot make a context (missing pair, unreadable, not PEM)."""


@dataclass(frozen=True)
class TlsFiles:
    """The paths of --tls-cert, --tls-key and --tls-ca (any may be None)."""

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None

    @property
    def any(self) -> bool:
        return any((self.cert, self.key, self.ca))

    def args(self) -> list[str]:
        """These files as command-line options, for starting processes."""
        pairs = (("--tls-cert", self.cert), ("--tls-key", self.key), ("--tls-ca", self.ca))
        return [arg for flag, path in pairs if path is not None for arg in (flag, str(path))]

    def check_pair(self) -> None:
        """A certificate needs its key and a key its certificate."""
        if (self.cert is None) != (self.key is None):
            given, missing = ("--tls-cert", "--tls-key") if self.key is None else (
                "--tls-key", "--tls-cert")
            raise TlsConfigError(f"{given} needs {missing} as well")


@dataclass(frozen=True)
class TlsContexts:
    """What a process wraps its sockets in: accepted ones (server) and its own calls."""

    server: ssl.SSLContext | None = None
    client: ssl.SSLContext | None = None

    @property
    def mode(self) -> str:
        """For the start-up log: off, on, or mutual (client certificates required)."""
        context = self.server or self.client
        if context is None:
            return "off"
        return "mutual" if self.server and self.server.verify_mode == ssl.CERT_REQUIRED else "on"


def load_contexts(files: TlsFiles, *, serves: bool) -> TlsContexts:
    """Both contexts of a server (TLS iff cert + key), or a client's one."""
    if not serves:
        return TlsContexts(client=client_context(files))
    server = server_context(files)
    return TlsContexts(server, client_context(files) if server else None)


def server_context(files: TlsFiles) -> ssl.SSLContext | None:
    """The context a server wraps accepted connections in; None when TLS is off."""
    if not files.any:
        return None
    files.check_pair()
    if files.cert is None:
        raise TlsConfigError("serving TLS needs --tls-cert and --tls-key (--tls-ca alone "
                             "only checks the other side)")
    context = _new_context(ssl.PROTOCOL_TLS_SERVER)
    _load_identity(context, files)
    if files.ca is not None:
        _load_ca(context, files.ca)
        context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: no certificate, no call
    return context


def client_context(files: TlsFiles) -> ssl.SSLContext | None:
    """The context a client wraps its connections in; None when TLS is off."""
    if not files.any:
        return None
    files.check_pair()
    context = _new_context(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    if files.ca is not None:
        _load_ca(context, files.ca)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if files.cert is not None:
        _load_identity(context, files)
    return context


def _new_context(protocol: int) -> ssl.SSLContext:
    context = ssl.SSLContext(protocol)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _readable(path: Path, flag: str) -> None:
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise TlsConfigError(f"cannot read {flag} {path}: {exc.strerror or exc}") from None


def _load_ca(context: ssl.SSLContext, ca: Path) -> None:
    _readable(ca, "--tls-ca")
    try:
        context.load_verify_locations(cafile=str(ca))
    except ssl.SSLError as exc:
        raise TlsConfigError(f"--tls-ca {ca}: no PEM certificate in it ({_reason(exc)})") \
            from None


def _load_identity(context: ssl.SSLContext, files: TlsFiles) -> None:
    assert files.cert is not None and files.key is not None
    _readable(files.cert, "--tls-cert")
    _readable(files.key, "--tls-key")
    try:  # the certificate alone first, so a bad one is named as such
        _new_context(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=str(files.cert))
    except ssl.SSLError as exc:
        raise TlsConfigError(f"--tls-cert {files.cert}: no PEM certificate in it "
                             f"({_reason(exc)})") from None
    try:
        context.load_cert_chain(str(files.cert), str(files.key))
    except ssl.SSLError as exc:
        raise TlsConfigError(f"--tls-key {files.key}: not a PEM private key matching "
                             f"--tls-cert {files.cert} ({_reason(exc)})") from None


def _reason(exc: ssl.SSLError) -> str:
    return str(exc.reason or exc.strerror or exc).lower().replace("_", " ")
