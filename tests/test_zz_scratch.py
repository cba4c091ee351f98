import threading, time, pytest
from fixtures_card import *
from token_wallet.tokens import pcsc
from token_wallet.tokens.base import KeyType, TokenError
from token_wallet.tokens.openpgp_card import OpenPgpCardToken

@pytest.mark.parametrize("i", range(4))
def test_remove_fast_close(virtual_card, i, monkeypatch):
    monkeypatch.setattr(pcsc, "_card_gone_after_failure", lambda reader: False)
    card = virtual_card(0)
    token = OpenPgpCardToken(card.reader)
    rec = token.generate_key(KeyType.RSA2048, "123456", so_pin="12345678")
    threading.Timer(0.3, lambda: card.stop(wait=False)).start()
    t0 = time.monotonic()
    try:
        for _ in range(100000):
            token.sign(rec, b"x" * 1024, "123456")
    except TokenError as e:
        print(i, type(e).__name__, e, f"{time.monotonic()-t0:.2f}")
    token.close()

def test_after(virtual_card):
    t0 = time.monotonic()
    card = virtual_card(0)
    print("appeared after", time.monotonic() - t0)
