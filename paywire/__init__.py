"""Wire format shared by the wallet and the center.

Modules, one per concern:
- `errors`: the one exception type, with stable error codes.
- `canonical`: RFC 8785 canonical JSON bytes and a strict parser for them.
- `algorithms`: key ids, signature verification with pinned algorithms.
- `envelope`: the signed envelope (exact payload bytes + alg + kid + signature).
- `messages`: the message types, the common signed header, building and parsing payloads.
- `bodies`: the body of each request type and each operator action's arguments.
- `fields`: what one field may be (id patterns, limits) and its checks, for header and bodies.
"""
