"""Schemathesis hooks for Custodian's gateway: how to send a security event token."""

import schemathesis


@schemathesis.serializer("application/secevent+jwt")
def secevent_jwt(ctx, value):
    # RFC 8417 / RFC 8935: the body is the compact JWS itself.
    if value is None:
        return b""
    return value.encode("utf-8") if isinstance(value, str) else str(value).encode("utf-8")
