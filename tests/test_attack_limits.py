"""Attacks on the center's and the wallet's limits (issue 17 points 5, 6, 7; issue 11 point 8).

- Expensive keys: an RSA key with a huge public exponent is refused at enrollment (e = 65537
  only), and RSA payment signatures are verified in a worker thread, never on the event loop.
- Unthrottled growth: anonymous enrollments are limited per source address (127.0.0.2 floods,
  127.0.0.1 still enrolls), signed requests per key (one key's balance flood is cut to 429, another
  key is served), notices fetches and payments per key; 429 carries retry_after and Retry-After.
- Unbounded option files: every file or descriptor named by an option, pointed at /dev/zero or
  /dev/urandom, is refused in one line naming the size limit, quickly, in little memory, with
  nothing written.
- Amounts: non-ASCII digits ('৪০০', '１５００', '٣', '²') are refused by name, by the real `wallet`,
  with nothing signed or queued.
Real parts: SoftHSM tokens, `center serve` over HTTPS on loopback, `wallet`/`center` processes.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from receipt_support import receipt_result
from sqlalchemy import func, select
from stress_support import Api, LiveCenter, enrollment, pay_body
from support import SOFTHSM_MODULE, SoftwareSigner, cli_env
from test_wallet_e2e import WalletUser

from center.storage.config import CenterConfig
from center.storage.db import keys, messages, parties
from paywire import algorithms
from paywire.algorithms import key_id, load_public_key, verify_signature
from paywire.errors import WireError
from paywire.money import AmountError, parse_amount

STORE_NAME = "Limits Store"
LIMIT_ENROLL_BURST = 20
LIMIT_SIGNED_BURST = 30
LIMIT_NOTICES_BURST = 5
LIMIT_PAYMENTS_BURST = 12
CHILD_MEMORY_CAP_BYTES = (
    2 * 1024**3
)  # RLIMIT_AS for the option-file children: a reader that reads all dies here
CHILD_MAX_RSS_KB = 200 * 1024
CHILD_TIMEOUT_S = 60


class RsaSigner(SoftwareSigner):
    """An RSA member key in memory (RS256); `forge` makes it send garbage signatures."""

    def __init__(self, private_key: rsa.RSAPrivateKey):
        self.algorithm = "RS256"
        self._key = private_key
        self.spki = private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.kid = key_id(self.spki)
        self.counter = 0
        self.forge = False

    def sign(self, data: bytes) -> bytes:
        if self.forge:
            return secrets.token_bytes(self._key.key_size // 8)
        return self._key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def huge_exponent_key(bits: int = 3072) -> rsa.RSAPrivateKey:
    """A valid RSA key whose public exponent has bits - 2 bits (what the attack enrolled)."""
    base = rsa.generate_private_key(65537, bits).private_numbers()
    p, q = base.p, base.q
    lam = (p - 1) * (q - 1) // _gcd(p - 1, q - 1)
    while True:
        e = secrets.randbits(bits - 2) | (1 << (bits - 3)) | 1
        if _gcd(e, lam) == 1:
            break
    d = pow(e, -1, lam)
    numbers = rsa.RSAPrivateNumbers(
        p=p,
        q=q,
        d=d,
        dmp1=d % (p - 1),
        dmq1=d % (q - 1),
        iqmp=pow(q, -1, p),
        public_numbers=rsa.RSAPublicNumbers(e, p * q),
    )
    return numbers.private_key(unsafe_skip_rsa_key_validation=True)


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


@pytest.fixture(scope="module")
def rsa4096_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 4096)


# --- 17.5: expensive keys -----------------------------------------------------------------------


def enroll_direct(center, signer, role: str = "member", **fields) -> str:
    request = signer.envelope("enroll", signer.enroll_body(role, **fields), aud=center.center_id)
    return _result(center, center.enroll(request))["member_id"]


def _result(center, response: dict) -> dict:
    return receipt_result(response)


def count(center, table) -> int:
    with center.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_rsa_key_with_a_huge_exponent_is_refused_at_enrollment(api, center):
    signer = RsaSigner(huge_exponent_key(3072))
    request = signer.envelope("enroll", signer.enroll_body("member"), aud=center.center_id)
    response = api.post("/v1/enroll", json=request.to_json())
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "key_not_allowed"
    assert "exponent" in error["message"] and "3070 bits" in error["message"] and "65537" in error["message"]
    assert count(center, parties) == 0 and count(center, keys) == 0


def test_verification_refuses_an_rsa_key_with_another_exponent_even_if_stored_before():
    """A key enrolled before the rule (e = 3 here) is refused when it signs, not verified."""
    key = huge_exponent_key(2048)
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(WireError) as caught:
        load_public_key(spki, "RS256")
    assert caught.value.code == "key_not_allowed"
    with pytest.raises(WireError) as caught:
        verify_signature("RS256", key.public_key(), b"m", key.sign(b"m", padding.PKCS1v15(), hashes.SHA256()))
    assert caught.value.code == "key_not_allowed"


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_rsa_payment_signatures_are_verified_off_the_event_loop(api, center, rsa4096_key, monkeypatch):
    """8 bad-signature payments from an enrolled RSA-4096 key (e = 65537) between a normal member's
    payments: every RSA verification runs in a worker thread (the loop keeps serving), the forgeries
    get 401, the normal member is paid. The real verifier runs; the spy only notes where."""
    store = SoftwareSigner()
    store_id = enroll_direct(center, store, "store", name=STORE_NAME)
    member, attacker = SoftwareSigner(), RsaSigner(rsa4096_key)
    for signer in (member, attacker):
        enroll_direct(center, signer)
        topup = signer.envelope(
            "topup", {"amount_minor": 10_000, "currency": "JPY", "method": "bank"}, aud=center.center_id
        )
        center.decide_topup(
            _result(center, center.submit(topup, "topup"))["topup_id"], "confirm", decided_by="operator:test"
        )
    where = []
    real_verify = algorithms._VERIFIERS["RS256"]

    def spy(key, message, signature):
        where.append(_on_event_loop())
        return real_verify(key, message, signature)

    monkeypatch.setitem(algorithms._VERIFIERS, "RS256", spy)

    def pay(signer, order: str):
        envelope = signer.envelope("pay", pay_body(store_id, 100, order, STORE_NAME), aud=center.center_id)
        return api.post("/v1/payments", json=envelope.to_json())

    assert pay(attacker, "rsa-good-1").status_code == 200  # the key is now known: the hot path from here
    attacker.forge = True
    for i in range(8):
        forged = pay(attacker, f"rsa-forged-{i}")
        assert forged.status_code == 401 and forged.json()["error"]["code"] == "bad_signature", forged.text
        assert pay(member, f"normal-{i}").status_code == 200
    attacker.forge = False
    assert pay(attacker, "rsa-good-2").status_code == 200
    assert len(where) == 10, where
    assert not any(where), f"{sum(where)} of {len(where)} RSA verifications ran on the event loop"


# --- 17.6: limits per source address and per key (a live center) --------------------------------


@pytest.fixture(scope="module")
def limited_center(tmp_path_factory):
    """`center serve` (one worker, SQLite) with small limits written into its config.json."""
    root = tmp_path_factory.mktemp("limits")
    center = LiveCenter.create(root, f"sqlite:///{root / 'center.db'}")
    config = CenterConfig.load(center.data_dir)
    config.rate_limits = {
        "enroll_per_address": {"burst": LIMIT_ENROLL_BURST, "per_minute": 1},
        "signed_per_key": {"burst": LIMIT_SIGNED_BURST, "per_minute": 1},
        "notices_per_key": {"burst": LIMIT_NOTICES_BURST, "per_minute": 1},
        "payments_per_key": {"burst": LIMIT_PAYMENTS_BURST, "per_minute": 1},
    }
    config.save()
    center.process.start()
    yield center
    center.close()


def client_from(center: LiveCenter, source: str) -> httpx.Client:
    transport = httpx.HTTPTransport(verify=center.ssl_context(), local_address=source)
    return httpx.Client(base_url=center.url, transport=transport, timeout=30.0)


def assert_rate_limited(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["code"] == "rate_limited" and error["message"]
    assert isinstance(error["retry_after"], int) and error["retry_after"] >= 1
    assert response.headers["retry-after"] == str(error["retry_after"])


def test_an_enrollment_flood_from_one_address_is_cut_while_another_address_enrolls(limited_center):
    center = limited_center
    parties_before = center.count(parties)
    statuses = []
    with client_from(center, "127.0.0.2") as flood:
        for _ in range(300):
            request = enrollment(center, SoftwareSigner(), "member", name="Flood")
            response = flood.post("/v1/enroll", json=request.to_json())
            statuses.append(response.status_code)
            if response.status_code == 429:
                assert_rate_limited(response)
    accepted = statuses.count(200)
    assert LIMIT_ENROLL_BURST <= accepted <= LIMIT_ENROLL_BURST + 1, (
        statuses
    )  # + what 1/min refills meanwhile
    assert statuses.count(429) == 300 - accepted
    assert center.count(parties) - parties_before == accepted  # a refused one stored nothing
    with client_from(center, "127.0.0.1") as member:
        signer = SoftwareSigner()
        request = enrollment(center, signer, "member", name="Honest Member")
        response = member.post("/v1/enroll", json=request.to_json())
        assert response.status_code == 200, response.text
        # a resend of the same enrollment (a wallet retrying) is answered, and costs no allowance
        assert member.post("/v1/enroll", json=request.to_json()).json() == response.json()


def test_a_balance_flood_from_one_key_is_cut_while_another_key_is_served(limited_center):
    center = limited_center
    with Api(center) as api:
        flooder, _ = api.enroll("member", name="Flooding Member")
        other, _ = api.enroll("member", name="Quiet Member")
        statuses = []
        for _ in range(LIMIT_SIGNED_BURST + 10):
            answer = api.post("/v1/balance", flooder.envelope("balance", {}, aud=center.center_id))
            statuses.append(answer.status)
        assert statuses[:LIMIT_SIGNED_BURST] == [200] * LIMIT_SIGNED_BURST, statuses
        assert statuses[LIMIT_SIGNED_BURST + 1 :] == [429] * 9, statuses
        # nothing was written for the refused ones
        assert center.count(messages, messages.c.kid == flooder.kid) <= LIMIT_SIGNED_BURST + 1
        assert api.post("/v1/balance", other.envelope("balance", {}, aud=center.center_id)).status == 200
    with client_from(center, "127.0.0.1") as http:
        assert_rate_limited(
            http.post("/v1/balance", json=flooder.envelope("balance", {}, aud=center.center_id).to_json())
        )


def test_forgeries_naming_a_key_do_not_spend_its_allowance(limited_center):
    """Only the key's holder can spend its allowance: 2x the burst of bad signatures under a
    member's key id are refused as forgeries (401), and the member is still served."""
    center = limited_center
    with Api(center) as api:
        victim, _ = api.enroll("member", name="Victim Member")
        forger = SoftwareSigner()
        for _ in range(2 * LIMIT_SIGNED_BURST):
            forged = forger.envelope("balance", {}, aud=center.center_id, kid=victim.kid)
            assert api.post("/v1/balance", forged).status == 401
        assert api.post("/v1/balance", victim.envelope("balance", {}, aud=center.center_id)).status == 200


def test_notices_and_payments_have_their_own_per_key_limits(limited_center):
    center = limited_center
    with Api(center) as api:
        store, store_id = api.enroll("store", name=STORE_NAME)
        buyer, _ = api.enroll("member", name="Paying Member")
        api.confirm_by_webhook(api.topup(buyer, 10_000), 10_000)
        notices = [
            api.post(
                "/v1/notices", store.envelope("notices", {"after": 0, "limit": 100}, aud=center.center_id)
            ).status
            for _ in range(LIMIT_NOTICES_BURST + 2)
        ]
        assert notices == [200] * LIMIT_NOTICES_BURST + [429, 429], notices
        paid = [
            api.post(
                "/v1/payments",
                buyer.envelope("pay", pay_body(store_id, 10, f"o-{i}", STORE_NAME), aud=center.center_id),
            ).status
            for i in range(LIMIT_PAYMENTS_BURST + 2)
        ]
        assert paid == [200] * LIMIT_PAYMENTS_BURST + [429, 429], paid
        batch = [
            buyer.envelope(
                "pay", pay_body(store_id, 10, f"b-{i}", STORE_NAME), aud=center.center_id
            ).to_json()
            for i in range(3)
        ]
        with client_from(center, "127.0.0.1") as http:
            results = http.post("/v1/payments/batch", json={"payments": batch}).json()["results"]
        assert [r["error"]["code"] for r in results] == ["rate_limited"] * 3
        assert center.balance(_member_id(center, buyer.kid)) == 10_000 - 10 * LIMIT_PAYMENTS_BURST


def _member_id(center: LiveCenter, kid: str) -> str:
    with center.engine().connect() as conn:
        return conn.execute(select(keys.c.party_id).where(keys.c.kid == kid)).scalar_one()


def test_token_buckets_track_a_bounded_number_of_clients():
    from center.api.ratelimit import Rate, TokenBuckets

    clock = [0.0]
    buckets = TokenBuckets(Rate(burst=2, per_minute=60), max_clients=100, clock=lambda: clock[0])
    for i in range(10_000):
        assert buckets.take(f"client-{i}") == 0.0
    assert len(buckets) == 100
    assert buckets.take("client-9999") == 0.0 and buckets.take("client-9999") == pytest.approx(1.0)
    clock[0] += 1.0
    assert buckets.take("client-9999") == 0.0  # refilled at one per second


# --- 17.7: files named by options are read with a bound ------------------------------------------


def run_measured(program: str, args: list[str], env: dict, pass_fds: tuple = ()) -> tuple[int, str, int]:
    """Run `python -m program args` under the memory cap; (exit code, stderr, the child's own max RSS
    in KiB), measured by tests/measure_child.py (see there why not from here)."""
    module = {"wallet": "token_wallet", "center": "center"}[program]
    fds = ",".join(str(fd) for fd in pass_fds) or "-"
    launcher = [
        sys.executable,
        str(Path(__file__).with_name("measure_child.py")),
        str(CHILD_MEMORY_CAP_BYTES),
        fds,
    ]
    result = subprocess.run(
        [*launcher, sys.executable, "-m", module, *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        pass_fds=pass_fds,
        timeout=CHILD_TIMEOUT_S,
        check=False,
    )
    code, max_rss_kb = (int(word) for word in result.stdout.split())
    return code, result.stderr.decode(errors="replace"), max_rss_kb


@pytest.fixture(scope="module")
def option_files(tmp_path_factory, make_softhsm_token):
    """Good secret files, a token, and a fake backup key path: each case breaks exactly one option."""
    root = tmp_path_factory.mktemp("option-files")
    label, so_pin, pin = make_softhsm_token()
    files = {}
    for name, value in {
        "so": so_pin,
        "a": "A-passphrase-for-limits",
        "b": pin,
        "backup": "a backup password long enough 1",
    }.items():
        files[name] = root / name
        files[name].write_text(value + "\n")
        files[name].chmod(0o600)
    return root, label, files


def _option_cases(root: Path, label: str, files: dict, source: str):
    """(program, args, fd to pass or None, paths that must not exist afterwards)"""
    home = root / f"home-{secrets.token_hex(3)}"
    init = ["init", "--pkcs11-module", SOFTHSM_MODULE, "--token-label", label, "--home", str(home)]
    good = {"--so-pin-file": files["so"], "--password-a-file": files["a"], "--password-b-file": files["b"]}

    def wallet_init(option: str):
        args = dict(good, **{option: source})
        return ("wallet", init + [x for pair in args.items() for x in (pair[0], str(pair[1]))], None, [home])

    enroll = [
        "enroll",
        "--center",
        "https://127.0.0.1:9",
        "--name",
        "N",
        "--address",
        "A",
        "--birth-date",
        "1980-01-01",
        "--home",
        str(home),
        "--password-a-file",
        str(files["a"]),
    ]
    out = root / f"out-{secrets.token_hex(3)}"
    backup = [
        "backup",
        str(out / "b.tar"),
        "--data-dir",
        str(root / "no-center"),
        "--signing-key",
        str(root / "k"),
    ]
    return {
        "wallet init --entropy-file": (
            "wallet",
            [*init, "--entropy-file", source, *_flat(good)],
            None,
            [home],
        ),
        "wallet init --so-pin-file": wallet_init("--so-pin-file"),
        "wallet init --password-a-file": wallet_init("--password-a-file"),
        "wallet init --password-b-file": wallet_init("--password-b-file"),
        "wallet init --password-a-fd": (
            "wallet",
            [
                *init,
                "--password-a-fd",
                "FD",
                "--so-pin-file",
                str(files["so"]),
                "--password-b-file",
                str(files["b"]),
            ],
            source,
            [home],
        ),
        "wallet enroll --center-cert": ("wallet", [*enroll, "--center-cert", source], None, [home]),
        "wallet operator attach --center-cert": (
            "wallet",
            [
                "operator",
                "attach",
                "--center",
                "https://127.0.0.1:9",
                "--center-cert",
                source,
                "--home",
                str(home),
            ],
            None,
            [home],
        ),
        "center backup --signing-key-password-file": (
            "center",
            [*backup, "--signing-key-password-file", source],
            None,
            [out],
        ),
        "center backup --password-file": (
            "center",
            [*backup, "--signing-key-password-file", str(files["backup"]), "--password-file", source],
            None,
            [out],
        ),
        "center backup-key create --password-file": (
            "center",
            ["backup-key", "create", "--out", str(out), "--password-file", source],
            None,
            [out],
        ),
        "center issuer create-ca --password-file": (
            "center",
            ["issuer", "create-ca", "--out-dir", str(out), "--name", "Issuer", "--password-file", source],
            None,
            [out],
        ),
    }


def _flat(options: dict) -> list[str]:
    return [x for pair in options.items() for x in (pair[0], str(pair[1]))]


OPTION_CASES = list(
    _option_cases(Path("/"), "l", {k: Path("/") for k in ("so", "a", "b", "backup")}, "/dev/zero")
)


# /dev/urandom for one option of each reader (secret file, descriptor, option file, center side): every
# option is one of these readers, and each child costs ~1 s of the suite.
URANDOM_CASES = [
    "wallet init --password-b-file",
    "wallet init --password-a-fd",
    "wallet enroll --center-cert",
    "center backup --password-file",
]


@pytest.mark.parametrize(
    "case, source",
    [(case, "/dev/zero") for case in OPTION_CASES] + [(case, "/dev/urandom") for case in URANDOM_CASES],
)
def test_an_option_file_that_never_ends_is_refused_in_one_line(option_files, case, source):
    root, label, files = option_files
    program, args, fd_source, must_not_exist = _option_cases(root, label, files, source)[case]
    fds = ()
    if fd_source is not None:
        fd = os.open(fd_source, os.O_RDONLY)
        args = [str(fd) if a == "FD" else a for a in args]
        fds = (fd,)
    started = time.monotonic()
    try:
        code, stderr, max_rss_kb = run_measured(program, args, cli_env(), fds)
    finally:
        for fd in fds:
            os.close(fd)
    lines = stderr.strip().splitlines()
    assert code not in (0, 70) and len(lines) == 1, stderr[-2000:]
    assert lines[0].startswith("error: ") and ("4096 bytes" in lines[0] or "16384 bytes" in lines[0]), lines
    assert max_rss_kb < CHILD_MAX_RSS_KB, f"the child grew to {max_rss_kb // 1024} MiB"
    assert time.monotonic() - started < CHILD_TIMEOUT_S
    for path in must_not_exist:
        assert not path.exists() or not any(path.iterdir()), f"{path} was written"


def test_a_password_from_standard_input_by_descriptor_still_works(option_files):
    """--password-a-fd 0 with the password piped in: the bounded read of a descriptor still reads it."""
    root, label, files = option_files
    home = root / "home-stdin"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "token_wallet",
            "init",
            "--pkcs11-module",
            SOFTHSM_MODULE,
            "--token-label",
            label,
            "--home",
            str(home),
            "--password-a-fd",
            "0",
            "--so-pin-file",
            str(files["so"]),
            "--password-b-file",
            str(files["b"]),
            "--json",
        ],
        input=b"A-from-stdin\n",
        env=cli_env(),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (home / "vault.tpv").exists()


# --- 11.8: amounts are ASCII digits only ---------------------------------------------------------

NON_ASCII_AMOUNTS = {"৪০০": "U+09EA", "１５００": "U+FF11", "٣": "U+0663", "²": "U+00B2", "12.5٠": "U+0660"}


@pytest.mark.parametrize("text, named", NON_ASCII_AMOUNTS.items())
def test_parse_amount_refuses_non_ascii_digits_by_name(text, named):
    with pytest.raises(AmountError) as caught:
        parse_amount(text, "EUR")
    assert named in str(caught.value) and "ASCII" in str(caught.value)


def test_parse_amount_still_takes_ascii():
    assert parse_amount("1500", "JPY") == 1500 and parse_amount(" 12.50 ", "EUR") == 1250


@pytest.fixture(scope="module")
def member_wallet(limited_center, tmp_path_factory, make_softhsm_token):
    root = tmp_path_factory.mktemp("amounts")
    user = WalletUser(root, make_softhsm_token, "amounts")
    user.init()
    result = user.enroll_member(limited_center.process)
    assert result.returncode == 0, result.stderr
    with Api(limited_center) as api:
        _store, store_id = api.enroll("store", name=STORE_NAME)
    return user, store_id, user.json("status")["kid"]


@pytest.mark.parametrize(
    "command, amount",
    [("topup", "１５００"), ("topup", "٣"), ("topup", "²"), ("pay", "৪০০"), ("pay", "１５００")],
)
def test_wallet_refuses_non_ascii_amounts_and_signs_nothing(limited_center, member_wallet, command, amount):
    user, store_id, kid = member_wallet
    messages_before = limited_center.count(messages, messages.c.kid == kid)
    if command == "topup":
        result = user.run("topup", amount, "--method", "bank")
    else:
        result = user.run("pay", "--store", store_id, "--amount", amount, "--order", "A-1", "--yes")
    lines = result.stderr.strip().splitlines()
    assert result.returncode not in (0, 70) and len(lines) == 1, result.stderr
    assert NON_ASCII_AMOUNTS[amount] in lines[0] and "ASCII" in lines[0], lines
    assert (
        limited_center.count(messages, messages.c.kid == kid) == messages_before
    )  # nothing reached the center
    assert user.json("status")["outbox"] == 0  # nothing signed and queued


def test_a_retry_after_header_in_other_digits_is_ignored_not_a_crash():
    """'²' (a Latin-1 header byte) passes str.isdigit() and int() raises on it: a hostile answer must
    not crash the wallet."""
    from token_wallet.client import retry_after_note

    hostile = httpx.Response(429, headers=[(b"retry-after", "²".encode("latin-1"))])
    assert hostile.headers["retry-after"] == "²" and retry_after_note(hostile) == ""
    assert retry_after_note(httpx.Response(429, headers={"retry-after": "7"})) == ", retry after 7 s"
