// Verify a tenantgate `x-tenant-assertion` with jose (npm install jose).
//
// Usage: node verify.mjs JWKS_URL ISSUER AUDIENCE < token
// Prints the claims as JSON; exits 1 when the assertion does not verify.
import { createRemoteJWKSet, jwtVerify } from 'jose';

// Caches the keys; an unknown kid (a rotated key) refetches the JWKS.
export function verifier(jwksUrl) {
  return createRemoteJWKSet(new URL(jwksUrl));
}

export async function verify(jwks, token, issuer, audience) {
  const { payload } = await jwtVerify(token, jwks, {
    issuer,
    audience,
    algorithms: ['ES256', 'EdDSA'], // never take the algorithm from the token alone
    typ: 'tenant-assertion+jwt',
    requiredClaims: ['iat', 'exp'],
    clockTolerance: 5,
  });
  return payload;
}

// The plain headers must agree with the signed claims; bound assertions
// (htm/htu present) must have been made for this very request.
export function checkRequest(claims, headers, method, pathAndQuery) {
  if (headers['x-tenant-id'] !== claims.tenant_id) throw new Error('x-tenant-id disagrees');
  if (claims.htm && (claims.htm !== method || claims.htu !== pathAndQuery)) {
    throw new Error('assertion made for another request');
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const [jwksUrl, issuer, audience] = process.argv.slice(2);
  let token = '';
  for await (const chunk of process.stdin) token += chunk;
  try {
    const claims = await verify(verifier(jwksUrl), token.trim(), issuer, audience);
    console.log(JSON.stringify(claims));
  } catch (e) {
    console.error(`invalid assertion: ${e.message}`);
    process.exit(1);
  }
}
