// Test helper: signs in at the oidc-provider fixture (oidc-provider.mjs) like a browser plus a confidential client would.
// Usage: node oidc-login.mjs --issuer URL --client-id ID --client-secret SECRET --redirect-uri URI --login SUB [--nonce N]
// Runs discovery, the authorization code flow with PKCE (S256), the dev login and consent forms, and the token request
// (client_secret_post), using only fetch with manual redirects and a small cookie jar. Prints only the id_token.
import { createHash, randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';

const fail = (message) => {
  process.stderr.write(`oidc-login: ${message}\n`);
  process.exit(1);
};

let args;
try {
  ({ values: args } = parseArgs({
    options: Object.fromEntries(['issuer', 'client-id', 'client-secret', 'redirect-uri', 'login', 'nonce']
      .map((name) => [name, { type: 'string' }])),
  }));
} catch (error) {
  fail(error.message);
}
for (const name of ['issuer', 'client-id', 'client-secret', 'redirect-uri', 'login']) {
  if (!args[name]) fail(`missing --${name}`);
}

const b64url = (bytes) => Buffer.from(bytes).toString('base64url');
const unescapeHtml = (text) => text
  .replace(/&#x([0-9a-f]+);/gi, (_, hex) => String.fromCodePoint(parseInt(hex, 16)))
  .replace(/&#(\d+);/g, (_, dec) => String.fromCodePoint(Number(dec)))
  .replace(/&quot;/g, '"').replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&amp;/g, '&');
const snippet = (text) => unescapeHtml(text.replace(/<(style|script)\b[\s\S]*?<\/\1>/gi, ' ').replace(/<[^>]*>/g, ' '))
  .replace(/\s+/g, ' ').trim().slice(0, 300);
const attr = (tag, name) => {
  const match = tag.match(new RegExp(`\\s${name}="([^"]*)"`, 'i'));
  return match ? unescapeHtml(match[1]) : undefined;
};

// Cookie jar for the issuer's origin: name + path -> value, honouring deletion and path scoping.
const issuerOrigin = new URL(args.issuer).origin;
const jar = new Map();
function storeCookies(url, res) {
  if (url.origin !== issuerOrigin) return;
  for (const line of res.headers.getSetCookie()) {
    const [pair, ...attributes] = line.split(';').map((part) => part.trim());
    const name = pair.slice(0, pair.indexOf('='));
    const value = pair.slice(pair.indexOf('=') + 1);
    const options = Object.fromEntries(attributes.map((a) => [a.split('=')[0].toLowerCase(), a.split('=').slice(1).join('=')]));
    const path = options.path || '/';
    const expired = options['max-age'] !== undefined ? Number(options['max-age']) <= 0
      : options.expires !== undefined && Date.parse(options.expires) <= Date.now();
    if (expired || value === '') jar.delete(`${name};${path}`);
    else jar.set(`${name};${path}`, { name, value, path });
  }
}
function cookieHeader(url) {
  if (url.origin !== issuerOrigin) return undefined;
  const matching = [...jar.values()].filter(({ path }) => url.pathname === path
    || url.pathname.startsWith(path.endsWith('/') ? path : `${path}/`));
  return matching.length ? matching.map(({ name, value }) => `${name}=${value}`).join('; ') : undefined;
}

async function request(url, { method = 'GET', form } = {}) {
  const headers = {};
  const cookie = cookieHeader(url);
  if (cookie) headers.cookie = cookie;
  let body;
  if (form) {
    headers['content-type'] = 'application/x-www-form-urlencoded';
    body = new URLSearchParams(form).toString();
  }
  let res;
  try {
    res = await fetch(url, { method, headers, body, redirect: 'manual' });
  } catch (error) {
    fail(`${method} ${url}: ${error.cause?.message ?? error.message}`);
  }
  storeCookies(url, res);
  return res;
}

async function getJson(res, what) {
  const text = await res.text();
  if (!res.ok) fail(`${what}: HTTP ${res.status}: ${snippet(text)}`);
  try {
    return JSON.parse(text);
  } catch {
    return fail(`${what}: response is not JSON: ${snippet(text)}`);
  }
}

// Discovery.
const discoveryUrl = new URL(`${args.issuer.replace(/\/$/, '')}/.well-known/openid-configuration`);
const discovery = await getJson(await request(discoveryUrl), `discovery ${discoveryUrl}`);
if (discovery.issuer !== args.issuer) fail(`discovery issuer ${discovery.issuer} != ${args.issuer}`);

// Authorization request with PKCE S256.
const verifier = b64url(randomBytes(32));
const state = b64url(randomBytes(16));
const authorization = new URL(discovery.authorization_endpoint);
authorization.search = new URLSearchParams({
  response_type: 'code',
  client_id: args['client-id'],
  redirect_uri: args['redirect-uri'],
  scope: 'openid email profile phone',
  state,
  code_challenge: b64url(createHash('sha256').update(verifier).digest()),
  code_challenge_method: 'S256',
  ...(args.nonce !== undefined ? { nonce: args.nonce } : {}),
}).toString();

// Follow redirects and submit the login and consent forms until the provider redirects to redirect_uri.
const redirectUri = new URL(args['redirect-uri']);
let url = authorization;
let next = {};
let callback;
for (let step = 0; step < 20 && !callback; step += 1) {
  const res = await request(url, next);
  const what = `${next.method ?? 'GET'} ${url.pathname}`;
  if (res.status >= 300 && res.status < 400) {
    await res.body?.cancel();
    const location = res.headers.get('location');
    if (!location) fail(`${what}: HTTP ${res.status} without Location`);
    url = new URL(location, url);
    next = {};
    if (url.origin === redirectUri.origin && url.pathname === redirectUri.pathname) callback = url;
    continue;
  }
  const html = await res.text();
  const form = res.ok && html.match(/<form\b[^>]*>[\s\S]*?<\/form>/i);
  if (!form) fail(`${what}: HTTP ${res.status}, expected a redirect or a form: ${snippet(html)}`);
  const fields = {};
  for (const input of form[0].match(/<input\b[^>]*>/gi) ?? []) {
    const name = attr(input, 'name');
    if (name && attr(input, 'type') === 'hidden') fields[name] = attr(input, 'value') ?? '';
  }
  if (fields.prompt === 'login') Object.assign(fields, { login: args.login, password: 'any' });
  else if (fields.prompt !== 'consent') fail(`${what}: unexpected form (prompt=${fields.prompt}): ${snippet(html)}`);
  url = new URL(attr(form[0].match(/<form\b[^>]*>/i)[0], 'action') ?? url.href, url);
  next = { method: 'POST', form: fields };
}
if (!callback) fail('too many steps without reaching the redirect_uri');

const params = callback.searchParams;
if (params.get('error')) fail(`authorization error ${params.get('error')}: ${params.get('error_description') ?? ''}`);
if (params.get('state') !== state) fail(`state mismatch in ${callback}`);
if (params.get('iss') && params.get('iss') !== discovery.issuer) fail(`iss mismatch in ${callback}`);
const code = params.get('code');
if (!code) fail(`no code in ${callback}`);

// Token request, client_secret_post.
const tokens = await getJson(await request(new URL(discovery.token_endpoint), {
  method: 'POST',
  form: {
    grant_type: 'authorization_code',
    code,
    redirect_uri: args['redirect-uri'],
    code_verifier: verifier,
    client_id: args['client-id'],
    client_secret: args['client-secret'],
  },
}), 'token request');
if (typeof tokens.id_token !== 'string') fail(`token response without id_token: ${JSON.stringify(tokens)}`);
process.stdout.write(`${tokens.id_token}\n`);
