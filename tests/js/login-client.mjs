// A browser-style client written independently of the server: it signs in with each password
// transmission mode using only WebCrypto (globalThis.crypto.subtle), as a web page would.
// Usage: node login-client.mjs BASE_URL MODE IDENTITY PASSWORD [VARIANT]
//   MODE: plain | hash | symmetric | asymmetric; VARIANT for symmetric: hkdf (default) | raw
// Prints {status, body} of the login response as JSON.
const [base, mode, identity, password, variant = 'hkdf'] = process.argv.slice(2);
const subtle = globalThis.crypto.subtle;
const enc = new TextEncoder();
const b64 = (bytes) => Buffer.from(bytes).toString('base64');
const unb64 = (text) => new Uint8Array(Buffer.from(text, 'base64'));
const hex = (bytes) => Buffer.from(bytes).toString('hex');

async function getJson(path) {
  const res = await fetch(`${base}/api/v1${path}`);
  if (!res.ok) throw new Error(`${path}: ${res.status}`);
  return (await res.json()).data;
}

async function encode() {
  const config = await getJson('/public/auth-config/default');
  const body = { identity, password_transmission: mode };
  if (mode === 'plain') {
    body.password = password;
  } else if (mode === 'hash') {
    const digest = await subtle.digest('SHA-256', enc.encode(`${password}|${config.tenant_id}`));
    body.password = hex(new Uint8Array(digest));
  } else if (mode === 'asymmetric') {
    const pem = config.transmission_public_key.replace(/-----[^-]+-----/g, '').replace(/\s+/g, '');
    const key = await subtle.importKey('spki', unb64(pem), { name: 'RSA-OAEP', hash: 'SHA-256' }, false, ['encrypt']);
    body.password = b64(new Uint8Array(await subtle.encrypt({ name: 'RSA-OAEP' }, key, enc.encode(password))));
    body.key_id = config.transmission_public_key_id;
  } else if (mode === 'symmetric') {
    const kex = await getJson('/public/key-exchange');
    const serverKey = await subtle.importKey('raw', unb64(kex.server_pub_key), { name: 'ECDH', namedCurve: 'P-256' }, false, []);
    const pair = await subtle.generateKey({ name: 'ECDH', namedCurve: 'P-256' }, true, ['deriveBits']);
    const shared = new Uint8Array(await subtle.deriveBits({ name: 'ECDH', public: serverKey }, pair.privateKey, 256));
    let aesKey;
    if (variant === 'raw') {
      aesKey = await subtle.importKey('raw', shared, 'AES-GCM', false, ['encrypt']);
    } else {
      const ikm = await subtle.importKey('raw', shared, 'HKDF', false, ['deriveKey']);
      aesKey = await subtle.deriveKey(
        { name: 'HKDF', hash: 'SHA-256', salt: new Uint8Array(0), info: enc.encode(kex.algorithm) },
        ikm, { name: 'AES-GCM', length: 256 }, false, ['encrypt']);
    }
    const iv = globalThis.crypto.getRandomValues(new Uint8Array(12));
    const ct = new Uint8Array(await subtle.encrypt({ name: 'AES-GCM', iv }, aesKey, enc.encode(password)));
    const clientPoint = new Uint8Array(await subtle.exportKey('raw', pair.publicKey));
    body.password = b64(Buffer.concat([iv, ct, clientPoint]));
    body.key_exchange_id = kex.key_exchange_id;
    body.client_pub_key = b64(clientPoint);
  } else {
    throw new Error(`unknown mode ${mode}`);
  }
  return body;
}

const res = await fetch(`${base}/api/v1/auth/login`, {
  method: 'POST',
  headers: { 'content-type': 'application/json' },
  body: JSON.stringify(await encode()),
});
console.log(JSON.stringify({ status: res.status, body: await res.json() }));
