"""The center's data directory and its configuration file.

Layout of D:
    config.json          this file: ids, database URL, token and TLS locations
    center-cert.pem      the TLS certificate wallets pin (it also names the
                         center's receipt-signing key, see center.keys.identity)
    tls/key.pem          TLS private key (0600; TLS keys must be in software for uvicorn)
    secrets/token-pin    PIN of the center's token (0600), read by `serve`
    softhsm/             the center's own SoftHSM token directory, when it made one
    center.db            SQLite database, the default
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hostkit.cli import read_secret
from hostkit.private_files import replace_file

CONFIG_NAME = "config.json"
# A request not answered by then gets 503 database_unavailable (center.api.unavailable says why):
# longer than any answer under load here, shorter than the wallets' own timeouts.
DEFAULT_REQUEST_DEADLINE_S = 20.0
CERT_NAME = "center-cert.pem"


@dataclass
class CenterConfig:
    data_dir: Path
    center_id: str
    currency: str
    db_url: str
    pkcs11_module: str
    token_label: str
    token_pin_file: str
    softhsm_conf: str | None
    signing_key: dict = field(default_factory=dict)  # KeyRecord as JSON
    tls_key_file: str = ""
    webhook_secret_file: str = ""
    # Issuer-certified keys (center.keys.issuer_policy): "any" or "issuer_certified";
    # file names relative to the data directory, "" when no issuer CA is configured.
    issuer_policy: str = "any"
    issuer_ca_file: str = ""
    issuer_intermediates_file: str = ""
    # Request limits per worker process (center.api.ratelimit): {"NAME": {"burst": B, "per_minute": R},
    # "max_clients": N}; names left out keep their defaults (center.api.ratelimit.DEFAULT_RATES).
    rate_limits: dict = field(default_factory=dict)
    # Reverse proxies whose X-Forwarded-For the center believes (addresses or networks, e.g.
    # ["10.0.0.5", "fd00::/64"]); default none: the client is the TCP peer (center.console.auth).
    trusted_proxies: list = field(default_factory=list)
    # A standby's URL for the console's statistics and searches (center.console.routes); "" reads the
    # primary. Its rows may lag the primary by the standby's replay delay (docs/backup-center.md).
    read_db_url: str = ""
    request_deadline_s: float = DEFAULT_REQUEST_DEADLINE_S

    @property
    def cert_file(self) -> Path:
        return self.data_dir / CERT_NAME

    def save(self) -> None:
        document = asdict(self)
        document.pop("data_dir")
        replace_file(self.data_dir / CONFIG_NAME, json.dumps(document, indent=2, sort_keys=True).encode())

    @classmethod
    def load(cls, data_dir: Path) -> CenterConfig:
        path = Path(data_dir) / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: run `center init --data-dir {data_dir}` first")
        document = json.loads(path.read_text())
        return cls(data_dir=Path(data_dir).resolve(), **document)

    def token_pin(self) -> str:
        # The one bounded reader of secret files: a PIN file that never ends is refused, not read.
        return read_secret(what="token PIN", file_option=self.token_pin_file, env_var=None).strip()

    def apply_token_environment(self) -> None:
        # SoftHSM reads SOFTHSM2_CONF once per process, when the module is
        # loaded: set it before the first token call (DESIGN.md).
        if self.softhsm_conf:
            os.environ["SOFTHSM2_CONF"] = self.softhsm_conf
