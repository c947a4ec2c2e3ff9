"""gatekeeper: a reverse proxy that charges prepaid tickets per request.

The request path, one function per step:

    match route (routing) → authenticate (auth) → resolve pool → charge (ledger, Lua in Redis)
    → forward (proxy, streamed both ways) → settle (refund or actual cost) → log and count

A pool that cannot pay gets 402, and the request never reaches the upstream.
"""

__version__ = "0.1.0"
