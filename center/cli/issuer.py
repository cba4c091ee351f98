"""`center issuer`: a card issuer's CA and key certificates, and a center's trust in them.

create-ca and certify run at the card issuance station and need no center
data directory; trust and status configure and show a center. center.keys.issuer_setup and
issuer_policy are imported inside the functions that use them: they bring the center's error models
(pydantic), which `center --help` and every other command need not load (center.cli.common).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from center.cli.common import DataDir, JsonFlag, load_config
from center.keys import issuer
from hostkit.cli import CliError, emit, read_secret
from hostkit.private_files import write_new_file
from paywire.algorithms import algorithm_for_key, key_id

app = typer.Typer(
    help="Card issuer CA, key certificates, and which keys this center enrolls", no_args_is_help=True
)

PASSWORD_ENV = "CENTER_ISSUER_PASSWORD_FILE"
CA_CERT_NAME = "ca-cert.pem"
CA_KEY_NAME = "ca-key.pem"
KEY_FILE_MODE = 0o600  # encrypted, and still the owner's alone
CERT_FILE_MODE = 0o644  # certificates are public

PasswordFile = Annotated[
    str | None,
    typer.Option(
        "--password-file",
        envvar=PASSWORD_ENV,
        help=f"File with the CA key password (first line); or ${PASSWORD_ENV}",
    ),
]
Days = Annotated[
    int | None,
    typer.Option(
        "--days",
        help="Validity in days (default: create-ca 3650, certify 1095, or until the issuing CA expires "
        "if sooner)",
    ),
]


@app.command("create-ca")
def create_ca(
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Directory for ca-cert.pem and ca-key.pem")],
    name: Annotated[str, typer.Option("--name", help='The issuer\'s name, e.g. "Example Card Issuer"')],
    days: Days = None,
    password_file: PasswordFile = None,
    parent_cert: Annotated[Path | None, typer.Option(help="Make an intermediate CA under this CA")] = None,
    parent_key: Annotated[Path | None, typer.Option(help="The parent CA's key (with --parent-cert)")] = None,
    parent_password_file: Annotated[
        str | None, typer.Option(help="File with the parent CA key's password")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create an issuer CA: a P-256 key (encrypted, 0600) and its CA certificate; never overwrites."""
    cert_path, key_path = out_dir / CA_CERT_NAME, out_dir / CA_KEY_NAME
    for path in (cert_path, key_path):
        if os.path.lexists(path):
            raise CliError(
                f"{path} already exists; choose another --out-dir (an issuer CA is never overwritten)"
            )
    now_s = int(time.time())
    parent = _parent_ca(parent_cert, parent_key, parent_password_file, now_s)
    password = _password(password_file, "CA key password", confirm=True)
    if days is None:
        days = (
            issuer.default_days(parent.cert, now_s, issuer.DEFAULT_CA_DAYS)
            if parent
            else issuer.DEFAULT_CA_DAYS
        )
    authority = _issuer_call(lambda: issuer.create_ca(name, days=days, now_s=now_s, parent=parent))
    key_pem = _issuer_call(lambda: issuer.encrypt_ca_key(authority.key, password))
    _make_dir(out_dir)
    _write_new(key_path, key_pem, KEY_FILE_MODE)
    try:
        _write_new(cert_path, issuer.pem(authority.cert), CERT_FILE_MODE)
    except CliError:
        key_path.unlink(missing_ok=True)  # a key without its certificate is of no use
        raise
    document = {
        "cert": str(cert_path),
        "key": str(key_path),
        "intermediate": parent is not None,
        **issuer.describe(authority.cert),
    }
    emit(
        as_json,
        document,
        lambda out: out.print(
            f"{'intermediate' if parent else 'root'} CA {name} created, valid until "
            f"{_date(document['not_after_s'])}\n  certificate {cert_path}\n"
            f"  key {key_path} (encrypted, owner only)"
        ),
    )


@app.command("certify")
def certify(
    ca_cert: Annotated[Path, typer.Option("--ca-cert", help="The issuer CA certificate (PEM)")],
    ca_key: Annotated[Path, typer.Option("--ca-key", help="The issuer CA key (encrypted PEM)")],
    public_key: Annotated[
        Path, typer.Option("--public-key", help="The token key (`wallet export-public-key`)")
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Where to write the key certificate (PEM); never overwritten")
    ],
    subject: Annotated[
        str | None, typer.Option(help="Common name: member reference or card serial (default: the key id)")
    ] = None,
    days: Days = None,
    password_file: PasswordFile = None,
    as_json: JsonFlag = False,
) -> None:
    """Certify a token's public key: an X.509 certificate signed by the issuer CA."""
    if os.path.lexists(out):
        raise CliError(f"{out} already exists; choose another --out file")
    from center.keys.issuer_setup import read_pem_file

    pem = read_pem_file(public_key, "--public-key")
    spki_der = _issuer_call(lambda: issuer.load_public_key_pem(pem, f"--public-key {public_key}"))
    now_s = int(time.time())
    authority = _open_ca(ca_cert, ca_key, password_file, "CA key password", now_s)
    kid = key_id(spki_der)
    if days is None:
        days = issuer.default_days(authority.cert, now_s, issuer.DEFAULT_KEY_CERT_DAYS)
    cert = _issuer_call(
        lambda: issuer.certify_key(authority, spki_der, subject=subject or kid, days=days, now_s=now_s)
    )
    _write_new(out, issuer.pem(cert), CERT_FILE_MODE)
    document = {"cert": str(out), "kid": kid, "key_type": _key_type(spki_der), **issuer.describe(cert)}
    emit(
        as_json,
        document,
        lambda console: console.print(
            f"certified key {kid[:16]}... as {document['subject']} until {_date(document['not_after_s'])}\n"
            f"  certificate {out} (serial {document['serial']})"
        ),
    )


@app.command("trust")
def trust(
    data_dir: DataDir,
    ca_cert: Annotated[
        Path | None, typer.Option("--ca-cert", help="The card issuer's CA certificate(s)")
    ] = None,
    intermediate: Annotated[
        list[Path] | None, typer.Option(help="An intermediate CA issued by --ca-cert (repeatable)")
    ] = None,
    require_certified: Annotated[
        bool, typer.Option("--require-certified", help="Enroll only certified keys")
    ] = False,
    allow_uncertified: Annotated[
        bool,
        typer.Option(
            "--allow-uncertified",
            help="Enroll keys with or without a certificate (a present one is still checked)",
        ),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Configure this center's issuer CA and enrollment policy (restart `center serve` to apply)."""
    from center.keys import issuer_setup

    policy = issuer_setup.choose_policy(require_certified, allow_uncertified)
    if ca_cert is None and intermediate:
        raise CliError(
            "--intermediate needs --ca-cert: intermediates are checked against the CA they come from"
        )
    if ca_cert is None and policy is None:
        raise CliError(
            "nothing to change: give --ca-cert CA.pem and/or --require-certified / --allow-uncertified"
        )
    config = load_config(data_dir)
    trusted = None
    if ca_cert:
        trusted = issuer_setup.read_trust(ca_cert, list(intermediate or []), int(time.time()))
    issuer_setup.install(config, trusted, policy)
    config.save()
    document = issuer_setup.summary(config) | {"restart_needed": True}
    emit(as_json, document, lambda out: _render_summary(out, document, "restart `center serve` to apply it"))


@app.command("status")
def status(data_dir: DataDir, as_json: JsonFlag = False) -> None:
    """Show this center's enrollment policy and the issuer certificates it trusts."""
    from center.keys.issuer_setup import summary

    document = summary(load_config(data_dir))
    emit(as_json, document, lambda out: _render_summary(out, document, None))


def _render_summary(out, document: dict, note: str | None) -> None:
    from center.keys.issuer_policy import ISSUER_CERTIFIED

    if document["policy"] == ISSUER_CERTIFIED:
        enrollment = "only keys certified by the issuer CA"
    elif document["trusted"]:
        enrollment = "any key (a key certificate, when sent, is checked against the issuer CA)"
    else:
        enrollment = "any key (no issuer CA configured)"
    out.print("enrollment: " + enrollment)
    for cert in document["trusted"]:
        out.print(
            f"  trusted CA {cert['subject']} until {_date(cert['not_after_s'])} "
            f"(sha256 {cert['sha256'][:16]}...)"
        )
    for cert in document["intermediates"]:
        out.print(f"  intermediate {cert['subject']} until {_date(cert['not_after_s'])}")
    if note:
        out.print(note)


def _parent_ca(cert: Path | None, key: Path | None, password_file: str | None, now_s: int):
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise CliError("an intermediate CA needs both --parent-cert and --parent-key")
    return _open_ca(cert, key, password_file, "parent CA key password", now_s, env_var=None)


def _open_ca(
    cert: Path,
    key: Path,
    password_file: str | None,
    what: str,
    now_s: int,
    env_var: str | None = PASSWORD_ENV,
) -> issuer.CertificateAuthority:
    from center.keys.issuer_setup import read_pem_file

    cert_pem = read_pem_file(cert, "--ca-cert")
    key_pem = read_pem_file(key, "--ca-key")
    password = _password(password_file, what, confirm=False, env_var=env_var)
    return _issuer_call(lambda: issuer.load_ca(cert_pem, key_pem, password, now_s))


def _password(
    password_file: str | None, what: str, *, confirm: bool, env_var: str | None = PASSWORD_ENV
) -> str:
    if not password_file and not (env_var and os.environ.get(env_var)) and not sys.stdin.isatty():
        option = "--password-file" if env_var else "--parent-password-file"
        raise CliError(f"the {what} is needed and there is no terminal to ask it on: use {option} FILE")
    return read_secret(what=what, file_option=password_file, env_var=env_var, confirm=confirm)


def _issuer_call(action):
    try:
        return action()
    except issuer.IssuerError as error:
        raise CliError(str(error)) from None


def _make_dir(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as error:
        raise CliError(f"cannot create --out-dir {directory}: {error.strerror}") from None


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` holding `data` (hostkit.private_files: never over anything already there)."""
    try:
        write_new_file(path, data, mode=mode)
    except FileExistsError:
        raise CliError(f"{path} already exists; it was not overwritten") from None
    except OSError as error:
        raise CliError(f"cannot write {path}: {error.strerror}") from None


def _key_type(spki_der: bytes) -> str:
    """The words `wallet init --key-type` uses: p256, ed25519, rsa2048..."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    public_key = load_der_public_key(spki_der)
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"rsa{public_key.key_size}"
    return {"ES256": "p256", "Ed25519": "ed25519"}[algorithm_for_key(public_key)]


def _date(seconds: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(seconds))
