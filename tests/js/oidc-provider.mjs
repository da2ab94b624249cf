// Test fixture: an independent OpenID provider (npm oidc-provider) that issues real id_tokens to Keygate's tests.
// Usage: node oidc-provider.mjs CONFIG.json   (prints "READY <issuer>" on stdout once listening; SIGTERM stops it)
// CONFIG: {"port", "issuer", "keys_file", "keys": [{"kid", "alg": "RS256"|"ES256"}], "id_token_ttl_seconds",
//          "clients": [{"client_id", "client_secret", "redirect_uris"}],
//          "accounts": [{"sub", "email", "email_verified", "name", "phone_number"}]}
// The first entry of "keys" signs; private JWKs are kept in keys_file by kid so that restarts can rotate keys.
// Clients use the code flow with PKCE (S256, required) and client_secret_post at the token endpoint.
import { generateKeyPairSync } from 'node:crypto';
import { appendFileSync, existsSync, readFileSync, writeFileSync } from 'node:fs';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));

// stdout is reserved for the READY line: provider notices go to stderr, known dev-fixture warnings are dropped.
const quiet = ['devInteractions is enabled', 'in-memory adapter'];
const toStderr = (...args) => {
  if (!quiet.some((text) => String(args[0]).includes(text))) console.error(...args);
};
console.info = toStderr;
console.log = toStderr;
console.warn = toStderr;
const { default: Provider } = await import('oidc-provider');

const stored = existsSync(config.keys_file) ? JSON.parse(readFileSync(config.keys_file, 'utf8')) : {};
const KTY = { RS256: 'RSA', ES256: 'EC' };
const keys = config.keys.map(({ kid, alg }) => {
  if (!KTY[alg]) throw new Error(`unsupported alg ${alg} for key ${kid}`);
  if (!stored[kid]) {
    const { privateKey } = alg === 'RS256'
      ? generateKeyPairSync('rsa', { modulusLength: 2048 })
      : generateKeyPairSync('ec', { namedCurve: 'P-256' });
    stored[kid] = privateKey.export({ format: 'jwk' });
  }
  if (stored[kid].kty !== KTY[alg]) throw new Error(`key ${kid} in ${config.keys_file} is not usable for ${alg}`);
  return { ...stored[kid], kid, alg, use: 'sig' };
});
writeFileSync(config.keys_file, `${JSON.stringify(stored, null, 2)}\n`, { mode: 0o600 });

const accounts = new Map(config.accounts.map((account) => [account.sub, account]));

const provider = new Provider(config.issuer, {
  jwks: { keys },
  clients: config.clients.map((client) => ({
    client_id: client.client_id,
    client_secret: client.client_secret,
    redirect_uris: client.redirect_uris,
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_post',
    id_token_signed_response_alg: keys[0].alg,
  })),
  async findAccount(ctx, sub) {
    const account = accounts.get(sub);
    if (!account) {
      console.error(`oidc-provider fixture: unknown account ${sub}`);
      return undefined;
    }
    return {
      accountId: sub,
      async claims() {
        return { ...account, phone_number_verified: true };
      },
    };
  },
  scopes: ['openid', 'email', 'profile', 'phone'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
    phone: ['phone_number', 'phone_number_verified'],
  },
  // Put the scope claims into the id_token itself, not only behind the userinfo endpoint.
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  features: { devInteractions: { enabled: true } },
  ttl: { IdToken: config.id_token_ttl_seconds, AccessToken: 3600, Interaction: 3600, Session: 86400, Grant: 86400 },
  cookies: { keys: ['keygate-oidc-provider-fixture'] },
});

// Every request's method, path and W3C traceparent, one line each, for tests of trace
// propagation.
if (config.request_log) {
  provider.use(async (ctx, next) => {
    appendFileSync(config.request_log, `${ctx.method} ${ctx.path} ${ctx.get('traceparent') || '-'}\n`);
    await next();
  });
}

const server = provider.listen(config.port, '127.0.0.1', () => {
  process.stdout.write(`READY ${config.issuer}\n`);
});
process.on('SIGTERM', () => {
  server.close(() => process.exit(0));
  server.closeAllConnections();
});
