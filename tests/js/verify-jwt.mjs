// Verifies a Keygate access token with jose (an implementation independent of the server's)
// against the server's published JWKS, as an in-cluster service would.
// Usage: node verify-jwt.mjs JWKS_URL ISSUER AUDIENCE TOKEN
// Prints the verified payload and protected header as JSON; exits 1 if verification fails.
import { createRemoteJWKSet, jwtVerify } from 'jose';

const [jwksUrl, issuer, audience, token] = process.argv.slice(2);
if (!token) {
  console.error('usage: node verify-jwt.mjs JWKS_URL ISSUER AUDIENCE TOKEN');
  process.exit(2);
}
try {
  const jwks = createRemoteJWKSet(new URL(jwksUrl));
  const { payload, protectedHeader } = await jwtVerify(token, jwks, {
    issuer,
    audience,
    algorithms: ['ES256', 'EdDSA', 'RS256'],
  });
  console.log(JSON.stringify({ payload, protectedHeader }));
} catch (e) {
  console.error(`verification failed: ${e.code ?? ''} ${e.message}`);
  process.exit(1);
}
