"""Identity layer: bearer token in, verified `Identity` out.

    Authorization header ─► parse_bearer ─► token cache hit? ─► key still current? ─► Identity
                                                  │ miss
                                                  ▼
                  read_unverified (pick issuer by iss) ─► IssuerVerifier.verify ─► cache ─► Identity
                                                          alg allow-list, key by kid (keys,
                                                          keyfiles, jwks), signature, claims

Modules:
    authenticator  `Authenticator`, the one object the gateway calls.
    verifier       header parsing and the checks for one issuer.
    keys           keys bound to their algorithm family, key sets by kid.
    keyfiles       HMAC secrets from the environment, PEM and JWK Set files.
    jwks           keys fetched from a JWKS URL, cached and refreshed.
    cache          the LRU cache of verified tokens.
    identity       `Identity`, claim mapping, `check_scopes`.
    mint           `mint_token` for demos, tests and the CLI.

Every rejected token raises ``errors.MissingToken`` or ``errors.InvalidToken`` (401);
a missing scope raises ``errors.Forbidden`` (403).
"""

from gatekeeper.auth.authenticator import Authenticator
from gatekeeper.auth.identity import Identity, check_scopes

__all__ = ["Authenticator", "Identity", "check_scopes"]
