"""Issue 17.1 and 17.2: what a member or operator reads is what is signed.

Attacks on real processes (`center serve` over HTTPS, `wallet` and `center`
commands, SoftHSM tokens): a store name that draws another store's id as the
payee and hides the real one behind a concealing markup tag; unbalanced
closing tags in names and order references that crashed the pay prompt,
notices, history and list-keys for good; a rebind claim that hid every
"<- differs" mark; look-alike store names (an exact duplicate, a Cyrillic
'а' for a Latin 'a'). Plus a property test with hostile strings through the
wire checks and the real render functions, in process.

Colour output is forced (FORCE_COLOR) where the attack depends on it, and
`visible()` shows what a person would see on such a terminal: SGR sequences
applied, concealed and black-on-black text dropped.
"""

from __future__ import annotations

import ast
import io
import json
import re
from dataclasses import dataclass

import httpx
import pytest
from fuzz_support import sealed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from receipt_support import receipt_result
from sqlalchemy import create_engine, select
from sqlalchemy.exc import IntegrityError
from support import CenterProcess, SoftwareSigner, cli_env, free_port, run_cli
from test_payments_e2e import count_payments, fund
from test_wallet_e2e import WalletUser

from center.cli.keys import keys_table as list_keys_table
from center.storage.db import audit_log, normalise_url
from paywire.errors import WireError
from paywire.messages import build_payload, new_message_id
from token_wallet.cli.common import describe_result

STORE_ID = re.compile(r"S-[0-9a-f]{16}")
# What the fix adds (paywire.text.text_char_problem, token_wallet.cli.money.payment_block,
# center.keys.store_names...) is imported inside the tests that use it: this module also runs, and its
# attack tests fail, on the code from before the fix.
WIDE = {"FORCE_COLOR": "1", "TERM": "xterm-256color", "COLUMNS": "400"}


# --- what a person sees ------------------------------------------------------------------


def visible(output: str) -> str:
    """The text a colour terminal shows: SGR sequences applied, concealed (SGR 8) and
    same-colour-on-same-colour text left out, every other escape sequence removed."""
    shown, state = [], {"conceal": False, "fg": None, "bg": None}
    for part in re.split(r"(\x1b\[[0-9;]*m)", output):
        match = re.fullmatch(r"\x1b\[([0-9;]*)m", part)
        if match:
            _apply_sgr(state, [int(code or 0) for code in match.group(1).split(";")])
        elif not state["conceal"] and (state["fg"] is None or state["fg"] != state["bg"]):
            shown.append(re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07", "", part))
    return "".join(shown)


def _apply_sgr(state: dict, codes: list[int]) -> None:
    index = 0
    while index < len(codes):
        code = codes[index]
        if code in (38, 48):  # extended colour: 38;5;n or 38;2;r;g;b
            value = tuple(codes[index + 1 : index + (3 if codes[index + 1 : index + 2] == [5] else 5)])
            state["fg" if code == 38 else "bg"] = value
            index += 1 + len(value)
            continue
        if code == 0:
            state.update(conceal=False, fg=None, bg=None)
        elif code == 8:
            state["conceal"] = True
        elif code == 28:
            state["conceal"] = False
        elif 30 <= code <= 37 or 90 <= code <= 97:
            state["fg"] = ("basic", code % 10, code >= 90)
        elif 40 <= code <= 47 or 100 <= code <= 107:
            state["bg"] = ("basic", code % 10, code >= 100)
        elif code == 39:
            state["fg"] = None
        elif code == 49:
            state["bg"] = None
        index += 1


def test_visible_drops_concealed_and_black_on_black_text():
    assert visible("a\x1b[8mhidden\x1b[0mb \x1b[30;40mblack\x1b[0m c\x1b[1;31m red\x1b[0m") == "ab  c red"


# --- one center, one member, a few stores -------------------------------------------------


@dataclass
class World:
    center: CenterProcess
    member: WalletUser
    member_id: str
    store: WalletUser  # a store with a real wallet, named with unbalanced closing tags
    store_id: str
    victim_id: str  # "Kissa Hoshi", the store the look-alikes imitate
    center_id: str


MARKUP_STORE_NAME = "Shop [/bold] of [/] tags"


@pytest.fixture(scope="module")
def world(tmp_path_factory, make_softhsm_token):
    tmp = tmp_path_factory.mktemp("display")
    data_dir = tmp / "center"
    made = run_cli(
        "center",
        [
            "init",
            "--data-dir",
            str(data_dir),
            "--db",
            f"sqlite:///{tmp / 'center.db'}",
            "--currency",
            "JPY",
            "--json",
        ],
    )
    assert made.returncode == 0, made.stderr
    center = CenterProcess(data_dir=data_dir, port=free_port())
    center.start()
    try:
        member = WalletUser(tmp, make_softhsm_token, "m")
        member.init()
        enrolled = member.enroll_member(center)
        assert enrolled.returncode == 0, enrolled.stderr
        fund(member, center, "10000")
        store = WalletUser(tmp, make_softhsm_token, "s")
        store.init("--key-type", "ed25519")
        store_id = store.json(
            "enroll",
            "--center",
            center.url,
            "--center-cert",
            str(center.cert),
            "--store",
            "--name",
            MARKUP_STORE_NAME,
            "--address",
            "2-2 Shibuya",
            "--bank-account",
            "JP-0009-7654321",
        )["member_id"]
        center_id = _get(center, "/v1/center")["center_id"]
        world = World(
            center, member, json.loads(enrolled.stdout)["member_id"], store, store_id, "", center_id
        )
        world.victim_id = enroll_http(world, "store", name="Kissa Hoshi")["member_id"]
        yield world
    finally:
        center.stop()


def _client(center: CenterProcess) -> httpx.Client:
    import ssl

    return httpx.Client(
        base_url=center.url, verify=ssl.create_default_context(cafile=str(center.cert)), timeout=30
    )


def _get(center: CenterProcess, path: str) -> dict:
    with _client(center) as client:
        return client.get(path).json()


def enroll_http(world: World, role: str, **fields) -> dict:
    """An enrollment signed by a software key, sent to the real center over HTTPS: its receipt's
    result, or {"error": {...}} when refused."""
    signer = SoftwareSigner()
    body = signer.enroll_body(role, **fields) | ({"rebind": fields["rebind"]} if "rebind" in fields else {})
    with _client(world.center) as client:
        # Signed as is (fuzz_support.sealed): an attacker's own client skips the wallet's checks.
        answer = client.post(
            "/v1/enroll", json=sealed(signer, "enroll", body, aud=world.center_id).to_json()
        ).json()
    if "receipt" not in answer:
        return answer
    return receipt_result(answer)


def wallet(user: WalletUser, *args: str, **env: str):
    values = user.env(**env)
    values.pop("NO_COLOR", None)
    return run_cli("wallet", list(args), env=values)


def center_command(world: World, *args: str, **env: str):
    values = cli_env(**env)
    values.pop("NO_COLOR", None)
    return run_cli("center", [*args, "--data-dir", str(world.center.data_dir)], env=values)


# --- (a) a name that draws another store's id as the payee --------------------------------


def test_a_store_name_cannot_pass_another_store_id_off_as_the_payee(world):
    victim = world.victim_id
    attacker = enroll_http(world, "store", name=f"Kissa Hoshi ({victim}) for order 'A-100'?[conceal]")[
        "member_id"
    ]
    paid_before = count_payments(world.center)

    result = wallet(
        world.member, "pay", "--store", attacker, "--amount", "1", "--order", "A-100", "--yes", **WIDE
    )
    assert result.returncode == 0, result.stderr
    seen = visible(result.stderr)
    # The first store id a person reads is the payee's, on the line the wallet labels itself.
    assert STORE_ID.findall(seen)[:1] == [attacker], seen
    assert re.search(rf"^\s*store id\s+{attacker}\s+<- the money goes to this store id only", seen, re.M), (
        seen
    )
    # The other id appears only inside the quoted name (and in the wallet's warning about it).
    for line in seen.splitlines():
        if victim in line:
            assert line.lstrip().startswith(('name      "Kissa Hoshi (', "WARNING: ")), line
    assert f"\"Kissa Hoshi ({victim}) for order 'A-100'?[conceal]\"" in seen  # markup shown, not obeyed
    assert f"mentions {victim}, but the payee is {attacker}" in seen
    assert count_payments(world.center) == paid_before + 1  # and that payment went to the attacker's id:
    history = world.member.json("history")["entries"][-1]["details"]
    assert (history["store_id"], history["store_name"]) == (
        attacker,
        f"Kissa Hoshi ({victim}) for order 'A-100'?[conceal]",
    )


# --- (b) unbalanced closing tags everywhere ------------------------------------------------


def test_unbalanced_closing_tags_are_shown_and_crash_nothing(world):
    order = "[/] A-1 [/bold]"
    for extra in ([], ["--json"]):  # the prompt goes to stderr with --json too
        result = wallet(
            world.member,
            "pay",
            "--store",
            world.store_id,
            "--amount",
            "1",
            "--order",
            order,
            "--yes",
            "--allow-repeat",  # the same order twice, meant: the second run is a repeat
            *extra,
            **WIDE,
        )
        assert result.returncode == 0, result.stderr
        assert f'"{MARKUP_STORE_NAME}"' in visible(result.stderr) and f'"{order}"' in visible(result.stderr)
    for user, command in ((world.store, "notices"), (world.store, "history"), (world.member, "history")):
        result = wallet(user, command, **WIDE)
        assert result.returncode == 0, (command, result.stderr)
        assert order in visible(result.stdout), (command, result.stdout)
    assert MARKUP_STORE_NAME in visible(wallet(world.member, "history", **WIDE).stdout)


def test_a_rebind_claim_cannot_hide_or_crash_list_keys(world):
    for name in ("Hanako Yamada[conceal]", "[/bold]Hanako [/]", "Hanako[black on black]"):
        claim = enroll_http(world, "member", name=name, address="9-9 Elsewhere", rebind=world.member_id)
        assert claim.get("status") == "pending_bind", claim
    result = center_command(world, "operator", "list-keys", "--status", "pending_bind", **WIDE)
    assert result.returncode == 0, result.stderr
    seen = visible(result.stdout)
    for name in ("Hanako Yamada[conceal]", "[/bold]Hanako [/]", "Hanako[black on black]"):
        assert f"name: {name} / registered: Hanako Yamada  <- differs" in seen, seen
    assert seen.count("address: 9-9 Elsewhere / registered: 1-1 Chiyoda, Tokyo  <- differs") == 3, seen


# --- (c) hostile strings: refused by the wire, or shown literally --------------------------

MARKUP = st.sampled_from(
    [
        "[bold]",
        "[/]",
        "[/bold]",
        "[conceal]",
        "[black on black]",
        "[link=https://x]",
        ":smile:",
        "[",
        "]",
        "\\[",
        "[red]x[/red]",
        "[/conceal]",
        "[reverse]",
        "[@click]",
    ]
)
CONTROLS = st.sampled_from(
    ["\x1b[2J", "\x1b]0;title\x07", "\x9b31m", "\x85", "\r", "\n", "\t", "\x00", "\x7f", "\x08", "\x1b[8m"]
)
INVISIBLE = st.sampled_from(
    [
        "\u202e",
        "\u202a",
        "\u2066",
        "\u2069",
        "\u200e",
        "\u200f",
        "\u061c",
        "\u200b",
        "\u200d",
        "\ufeff",
        "\u2060",
        "\u2028",
        "\u2029",
        "\U000e0041",
        "\ue000",
        "\u3164",
        "\u00ad",
        "\U0010fffd",
    ]
)
HOSTILE = st.lists(
    st.one_of(
        MARKUP,
        CONTROLS,
        INVISIBLE,
        st.text(max_size=6),
        st.sampled_from(["S-0123456789abcdef", '"', "\\", "store id", "x" * 150, "  "]),
    ),
    min_size=1,
    max_size=6,
).map("".join)
PAYEE = "S-fedcba9876543210"


def _render(renderable, width: int) -> str:
    from hostkit.console import PlainConsole

    console = PlainConsole(file=io.StringIO(), width=width)
    console.print(renderable)
    return console.file.getvalue()


def _wire_verdict(text: str) -> str | None:
    """None when a payment naming `text` as payee name and order reference can be built, else the code."""
    body = {
        "payee": PAYEE,
        "payee_name": text[:200],
        "amount_minor": 1,
        "currency": "JPY",
        "order_ref": text[:64],
    }
    try:
        build_payload(
            "pay", aud="center-test", kid="0" * 64, msg_id=new_message_id(), ctr=1, body=body, now_s=10**9
        )
    except WireError as error:
        return error.code
    return None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=HOSTILE)
def test_hostile_text_is_refused_by_the_wire_or_shown_literally(text):
    from hostkit.shown import quoted
    from paywire.text import text_char_problem
    from token_wallet.cli.money import payment_block

    verdict = _wire_verdict(text)
    unshown = any(text_char_problem(ch) for ch in text[:200])  # the longer of the two fields
    assert verdict in (
        (None, "malformed_payload") if not unshown else ("malformed_payload", "text_not_allowed")
    )

    # Displays never obey or hide it, whatever came through (a store enrolled before the rule, a
    # center that lies): the pay prompt, history's line, list-keys' claim column.
    payee = {"store_id": PAYEE, "name": text, "name_flagged": False, "resembles": None}
    block, warnings = payment_block(payee, "1 JPY", text)
    for width in (60, 2000):
        out = _render(block, width)
        assert not any(text_char_problem(ch) for ch in out.replace("\n", "")), repr(out)
        lines = out.splitlines()
        labels = [line[:12].strip() for line in lines[1:]]
        assert set(labels) <= {"store id", "name", "order", ""}, out
        assert labels.count("store id") == 1 and labels[0] == "store id", out
        assert lines[1][12:].startswith(f"{PAYEE}   <- the money goes"), out
    # Wide enough not to wrap: the quoted name decodes to exactly the name (cut at 100, marked).
    wide = _render(block, 2000).splitlines()
    name_value = wide[2][12:].rstrip()
    literal = name_value[: name_value.rindex('"') + 1]
    assert ast.literal_eval(literal) == text[:100], name_value
    assert (" ... (+" in name_value) == (len(text) > 100)
    other_ids = set(STORE_ID.findall(text)) - {PAYEE}
    assert bool(other_ids) == any("mentions" in warning for warning in warnings)

    history_line = _render(
        describe_result(
            {
                "action": "paid",
                "amount_minor": 1,
                "currency": "JPY",
                "store_id": PAYEE,
                "store_name": text,
                "order_ref": text,
                "payment_id": "P-0123456789abcdef",
            }
        ),
        2000,
    )
    assert history_line.startswith(f"1 JPY to store {PAYEE} {quoted(text)}, order "), history_line
    claim = {
        "kind": "rebind",
        "status": "pending",
        "claimed": {"name": text, "address": "a", "birth_date": None, "bank_account": None},
        "registered": {"name": "Hanako", "address": "a", "birth_date": None, "bank_account": None},
    }
    keys = [
        {
            "kid": "ab" * 32,
            "member_id": "M-0123456789abcdef",
            "role": "member",
            "status": "pending_bind",
            "algorithm": "ES256",
            "claim": claim,
        }
    ]
    table = _render(list_keys_table(keys), 2000)
    assert "<- differs" in table and not any(text_char_problem(ch) for ch in table.replace("\n", ""))


@pytest.mark.parametrize(
    "name, code",
    [
        ("Kissa\u202eihsoH", "text_not_allowed"),
        ("Kissa\u200bHoshi", "text_not_allowed"),
        ("Kissa\x9b8mHoshi", "text_not_allowed"),
        ("Kissa\u2028Hoshi", "text_not_allowed"),
        ("Kissa\x1b[8mHoshi", "malformed_payload"),
    ],
)
def test_the_center_refuses_hostile_names_at_enrollment(world, name, code):
    from paywire.text import text_char_problem

    answer = enroll_http(world, "store", name=name)
    assert answer.get("error", {}).get("code") == code, answer
    assert (
        f"U+{ord(next(ch for ch in name if text_char_problem(ch))):04X}" in answer["error"]["message"]
        or code == "malformed_payload"
    )


def test_a_hostile_order_reference_is_refused_before_the_prompt(world):
    result = wallet(
        world.member, "pay", "--store", world.victim_id, "--amount", "1", "--order", "A-1\u202e001", "--yes"
    )
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "U+202E" in result.stderr and "nothing was signed" in result.stderr and "Pay " not in result.stderr


def test_a_store_named_before_the_rule_cannot_be_paid_with_a_hidden_character(world):
    """A name the wire now refuses, stored before the rule (or by a center that lies): the wallet
    refuses to prompt or sign, in one line naming the code point, instead of showing it."""
    legacy = enroll_http(world, "store", name="Legacy Shop")["member_id"]
    _sql(world.center, "UPDATE parties SET name = :name WHERE id = :id", name="Legacy \u202epohS", id=legacy)
    result = wallet(world.member, "pay", "--store", legacy, "--amount", "1", "--order", "L-1", "--yes")
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert f"store {legacy}'s registered name contains U+202E" in result.stderr, result.stderr
    assert "\u202e" not in result.stderr


def _sql(center: CenterProcess, statement: str, **values) -> None:
    from sqlalchemy import text

    config = json.loads((center.data_dir / "config.json").read_text())
    engine = create_engine(normalise_url(config["db_url"]))
    with engine.begin() as conn:
        conn.execute(text(statement), values)
    engine.dispose()


# --- (d) look-alike store names --------------------------------------------------------------


def test_duplicate_and_homoglyph_store_names_are_flagged_until_an_operator_clears_them(world):
    cyrillic = enroll_http(world, "store", name="Kiss\u0430 Hoshi")["member_id"]  # Cyrillic а
    duplicate = enroll_http(world, "store", name="Kissa Hoshi")["member_id"]
    own = enroll_http(world, "store", name="Kissa Hoshi Ginza")["member_id"]
    for store_id in (cyrillic, duplicate):
        assert _get(world.center, f"/v1/stores/{store_id}") | {"name": None} == {
            "store_id": store_id,
            "name": None,
            "active": True,
            "name_flagged": True,
            "resembles": world.victim_id,
        }
    assert _get(world.center, f"/v1/stores/{own}")["name_flagged"] is False
    assert _get(world.center, f"/v1/stores/{world.victim_id}")["name_flagged"] is False

    listed = json.loads(center_command(world, "operator", "list-stores", "--flagged", "--json").stdout)[
        "stores"
    ]
    assert {s["store_id"]: s["resembles"] for s in listed} == {
        cyrillic: world.victim_id,
        duplicate: world.victim_id,
    }
    table = center_command(world, "operator", "list-stores", "--flagged", COLUMNS="300")
    assert table.returncode == 0 and f'{world.victim_id} "Kissa Hoshi"' in table.stdout, table.stdout
    assert f"{cyrillic}" in table.stdout and '"Kiss\u0430 Hoshi"' in table.stdout

    paid_before = count_payments(world.center)
    refused = wallet(
        world.member, "pay", "--store", cyrillic, "--amount", "1", "--order", "D-1", "--yes", **WIDE
    )
    assert refused.returncode == 1, refused.stderr
    seen = visible(refused.stderr)
    assert (
        f"WARNING: the center flagged this store's name: it looks like the name of store {world.victim_id}"
        in seen
    )
    assert seen.strip().splitlines()[-1].startswith(f"error: store {cyrillic} has a flagged look-alike name")
    assert count_payments(world.center) == paid_before

    cleared = center_command(world, "operator", "clear-store", cyrillic, "--json")
    assert cleared.returncode == 0, cleared.stderr
    assert json.loads(cleared.stdout) | {} == {
        "action": "store_name_cleared",
        "store_id": cyrillic,
        "resembles": world.victim_id,
        "repeated": False,
    }
    entry = _last_audit_entry(world.center)
    assert (entry.msg_type, entry.msg_id, entry.kid.startswith("operator:")) == (
        "store_name_clear",
        cyrillic,
        True,
    )
    assert _get(world.center, f"/v1/stores/{cyrillic}")["name_flagged"] is False
    paid = wallet(world.member, "pay", "--store", cyrillic, "--amount", "1", "--order", "D-2", "--yes")
    assert paid.returncode == 0 and "flagged" not in paid.stderr, paid.stderr
    assert count_payments(world.center) == paid_before + 1
    # The duplicate stays flagged; a store id that is not a store is one line.
    assert (
        wallet(
            world.member, "pay", "--store", duplicate, "--amount", "1", "--order", "D-3", "--yes"
        ).returncode
        == 1
    )
    bad = center_command(world, "operator", "clear-store", "S-123")
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1, bad.stderr


def _last_audit_entry(center: CenterProcess):
    config = json.loads((center.data_dir / "config.json").read_text())
    engine = create_engine(normalise_url(config["db_url"]))
    with engine.connect() as conn:
        entry = conn.execute(select(audit_log).order_by(audit_log.c.seq.desc()).limit(1)).first()
    engine.dispose()
    return entry


@pytest.mark.parametrize(
    "name",
    [
        "Kissa Hoshi",
        "kissa hoshi",
        "KISSA HOSHI",
        "Kissa  Hoshi",
        "Kiss\u0430 Hoshi",
        "\uff2b\uff49\uff53\uff53\uff41 \uff28\uff4f\uff53\uff48\uff49",
        "Kissa H0shi",
    ],
)
def test_skeletons_of_look_alikes_match(name):
    from center.keys.store_names import skeleton_sha256

    assert skeleton_sha256(name) == skeleton_sha256("Kissa Hoshi")


def test_only_one_store_is_the_first_of_a_skeleton(center):
    """Two look-alikes enrolling at once cannot both pass unflagged: the unique index refuses the
    second first-holder (PostgreSQL commits it later and center.pipeline.service retries the enrollment)."""
    from sqlalchemy import insert

    from center.keys.store_names import record_store_name, skeleton_sha256
    from center.storage.db import parties, store_names

    with center.engine.begin() as conn:
        for store_id in ("S-000000000000000a", "S-000000000000000b"):
            conn.execute(
                insert(parties).values(
                    id=store_id,
                    role="store",
                    name="Kissa Hoshi",
                    address="-",
                    status="active",
                    created_at_ms=1,
                )
            )
        assert record_store_name(conn, "S-000000000000000a", "Kissa Hoshi", 1) is None
        assert record_store_name(conn, "S-000000000000000b", "Kissа Hoshi", 2) == "S-000000000000000a"
    with pytest.raises(IntegrityError), center.engine.begin() as conn:
        conn.execute(
            insert(parties).values(
                id="S-000000000000000c",
                role="store",
                name="x",
                address="-",
                status="active",
                created_at_ms=1,
            )
        )
        conn.execute(
            insert(store_names).values(
                store_id="S-000000000000000c",
                skeleton_sha256=skeleton_sha256("Kissa Hoshi"),
                resembles=None,
                flag="none",
                created_at_ms=3,
            )
        )


def test_enrollment_through_the_api_flags_look_alikes(api, center):
    def enroll(name: str) -> dict:
        signer = SoftwareSigner()
        answer = api.post(
            "/v1/enroll",
            json=signer.envelope(
                "enroll", signer.enroll_body("store", name=name), aud=center.center_id
            ).to_json(),
        ).json()
        return receipt_result(answer)

    first = enroll("Corner Shop")["member_id"]
    assert "name_flagged" not in enroll("Corner Shop Annex")
    look_alike = enroll("C\u043erner Shop")  # Cyrillic о
    assert (look_alike["name_flagged"], look_alike["resembles"]) == (True, first)
    assert api.get(f"/v1/stores/{look_alike['member_id']}").json()["resembles"] == first


def test_migration_0009_flags_look_alikes_enrolled_before_it(db_url):
    from alembic import command
    from sqlalchemy import insert

    from center.storage.db import alembic_config, make_engine, migrate, parties, store_names

    engine = make_engine(db_url)
    config = alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0008")
        for index, name in enumerate(["Kissa Hoshi", "Other Shop", "KISSA  Hoshi", "Kiss\u0430 Hoshi"]):
            conn.execute(
                insert(parties).values(
                    id=f"S-{index:016x}",
                    role="store",
                    name=name,
                    address="-",
                    status="active",
                    created_at_ms=index,
                )
            )
    migrate(engine)
    with engine.connect() as conn:
        rows = {r.store_id: (r.flag, r.resembles) for r in conn.execute(select(store_names))}
    engine.dispose()
    first = "S-0000000000000000"
    assert rows == {
        first: ("none", None),
        "S-0000000000000001": ("none", None),
        "S-0000000000000002": ("flagged", first),
        "S-0000000000000003": ("flagged", first),
    }
