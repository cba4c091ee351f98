"""Configuring a center's issuer trust: the CA certificates copied into the
data directory (D/issuer/) and the policy fields in config.json.

Used by `center issuer trust` and `center init --issuer-ca`. Everything is
checked before anything is written; the caller saves the configuration.
A running center reads this at start: restart `center serve` after a change.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from center.keys import issuer
from center.keys.issuer_policy import ANY, CA_FILE, INTERMEDIATES_FILE, ISSUER_CERTIFIED, policy_of
from center.storage.config import CenterConfig
from hostkit.cli import CliError, read_option_file
from hostkit.private_files import PRIVATE_DIR_MODE, replace_file


@dataclass(frozen=True)
class Trust:
    """Checked CA certificates, ready to be installed."""

    trusted_pem: bytes
    intermediates_pem: bytes
    trusted: tuple[dict, ...]  # issuer.describe() of each, for output
    intermediates: tuple[dict, ...]


def read_trust(
    ca_file: Path, intermediate_files: list[Path], now_s: int, ca_option: str = "--ca-cert"
) -> Trust:
    """Read and check the CA file (1 to MAX_TRUSTED_CAS certificates) and the intermediates (one each)."""
    if len(intermediate_files) > issuer.MAX_INTERMEDIATES:
        raise CliError(f"at most {issuer.MAX_INTERMEDIATES} --intermediate files can be configured")
    try:
        trusted = issuer.load_pem_certificates(
            read_pem_file(ca_file, ca_option), f"{ca_option} {ca_file}", issuer.MAX_TRUSTED_CAS
        )
        for cert in trusted:
            issuer.check_ca_certificate(cert, now_s)
        intermediates = [
            issuer.load_pem_certificates(read_pem_file(path, "--intermediate"), f"--intermediate {path}", 1)[
                0
            ]
            for path in intermediate_files
        ]
        for cert in intermediates:
            issuer.check_intermediate(cert, tuple(trusted), now_s)
    except issuer.IssuerError as error:
        raise CliError(str(error)) from None
    return Trust(
        trusted_pem=b"".join(issuer.pem(c) for c in trusted),
        intermediates_pem=b"".join(issuer.pem(c) for c in intermediates),
        trusted=tuple(issuer.describe(c) for c in trusted),
        intermediates=tuple(issuer.describe(c) for c in intermediates),
    )


def choose_policy(require_certified: bool, allow_uncertified: bool) -> str | None:
    """The policy the flags ask for, or None to keep the current one."""
    if require_certified and allow_uncertified:
        raise CliError("--require-certified and --allow-uncertified exclude each other: choose one")
    if require_certified:
        return ISSUER_CERTIFIED
    return ANY if allow_uncertified else None


def install(config: CenterConfig, trust: Trust | None, policy: str | None) -> None:
    """Copy the certificates into the data directory and set the config fields (not saved here)."""
    new_policy = policy or config.issuer_policy
    if new_policy == ISSUER_CERTIFIED and trust is None and not config.issuer_ca_file:
        raise CliError("requiring certified keys needs the issuer's CA certificate: add --ca-cert CA.pem")
    if trust is not None:
        # Certificates are public, but kept 0600 like everything in the data directory.
        (config.data_dir / CA_FILE).parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
        replace_file(config.data_dir / CA_FILE, trust.trusted_pem)
        intermediates_path = config.data_dir / INTERMEDIATES_FILE
        if trust.intermediates_pem:
            replace_file(intermediates_path, trust.intermediates_pem)
        elif intermediates_path.exists():
            intermediates_path.unlink()
        config.issuer_ca_file = CA_FILE
        config.issuer_intermediates_file = INTERMEDIATES_FILE if trust.intermediates_pem else ""
    config.issuer_policy = new_policy


def read_init_trust(issuer_ca: Path | None, require_certified_keys: bool, now_s: int) -> Trust | None:
    """`center init --issuer-ca C [--require-certified-keys]`: checked before the center is created."""
    if require_certified_keys and issuer_ca is None:
        raise CliError("--require-certified-keys needs --issuer-ca CA.pem (the card issuer's CA certificate)")
    return read_trust(issuer_ca, [], now_s, "--issuer-ca") if issuer_ca is not None else None


def summary(config: CenterConfig) -> dict:
    """What `center issuer status` and `trust` print: policy and configured certificates."""
    try:
        policy = policy_of(config)
    except ValueError as error:
        raise CliError(str(error)) from None
    return {
        "policy": policy.mode,
        "data_dir": str(config.data_dir),
        "trusted": [issuer.describe(c) for c in policy.trusted],
        "intermediates": [issuer.describe(c) for c in policy.intermediates],
    }


def read_pem_file(path: Path, option: str) -> bytes:
    """A PEM file named by a command-line option, read up to the size limit (one line on failure)."""
    return read_option_file(path, option, max_bytes=issuer.MAX_PEM_BYTES, what="a PEM file")
