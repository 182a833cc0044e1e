#!/usr/bin/env python3
"""Verify a tenantgate `x-tenant-assertion` with PyJWT (pip install 'PyJWT[crypto]').

Usage: verify.py JWKS_URL ISSUER AUDIENCE < token
Prints the claims as JSON; exits 1 when the assertion does not verify.
"""
import json
import sys

import jwt  # PyJWT

ALGORITHMS = ["ES256", "EdDSA"]  # never take the algorithm from the token alone


def verifier(jwks_url):
    # Caches the keys; an unknown kid (a rotated key) refetches the JWKS.
    return jwt.PyJWKClient(jwks_url, cache_keys=True, lifespan=60)


def verify(client, token, issuer, audience):
    if jwt.get_unverified_header(token).get("typ") != "tenant-assertion+jwt":
        raise jwt.InvalidTokenError("not a tenant assertion")
    key = client.get_signing_key_from_jwt(token)
    return jwt.decode(
        token,
        key.key,
        algorithms=ALGORITHMS,
        issuer=issuer,
        audience=audience,
        leeway=5,
        options={"require": ["exp", "iat", "iss", "aud"]},
    )


def check_request(claims, headers, method, path_and_query):
    """The plain headers must agree with the signed claims; bound assertions
    (htm/htu present) must have been made for this very request."""
    if headers.get("x-tenant-id") != claims["tenant_id"]:
        raise jwt.InvalidTokenError("x-tenant-id disagrees with the assertion")
    if "htm" in claims and (claims["htm"], claims["htu"]) != (method, path_and_query):
        raise jwt.InvalidTokenError("assertion made for another request")


if __name__ == "__main__":
    jwks_url, issuer, audience = sys.argv[1:4]
    try:
        claims = verify(verifier(jwks_url), sys.stdin.read().strip(), issuer, audience)
    except jwt.PyJWTError as e:
        print(f"invalid assertion: {e}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(claims))
