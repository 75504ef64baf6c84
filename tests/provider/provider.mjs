// The real OpenID provider (panva's oidc-provider, OpenID Certified) that Custodian's tests
// and `make run` talk to. Served over TLS with a throwaway CA made at start, because the
// Rust OIDC client refuses plain-http revocation endpoints.
//
// Usage: node provider.mjs --dir <state dir> [--port <port>] [--clients <clients.json>]
// Prints one JSON line {"issuer": ..., "ca_file": ..., "initial_access_token": ...} once ready.
// State lives in memory: a restart forgets clients, grants and tokens.

import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import Provider, { errors } from 'oidc-provider';

const { values: args } = parseArgs({
  options: {
    dir: { type: 'string' },
    port: { type: 'string', default: '0' },
    clients: { type: 'string' },
    'initial-access-token': { type: 'string', default: 'custodian-dev-initial-access-token' },
  },
});
if (!args.dir) {
  console.error('usage: node provider.mjs --dir <state dir> [--port <port>] [--clients <clients.json>]');
  process.exit(2);
}
mkdirSync(args.dir, { recursive: true });

// A throwaway CA and a leaf for 127.0.0.1/localhost, made once per state dir.
function ensureCertificates(dir) {
  const ca = join(dir, 'ca.pem');
  const key = join(dir, 'leaf.key');
  const cert = join(dir, 'leaf.pem');
  if (existsSync(ca) && existsSync(key) && existsSync(cert)) return { ca, key, cert };
  const run = (...a) => execFileSync('openssl', a, { stdio: ['ignore', 'ignore', 'pipe'] });
  const caKey = join(dir, 'ca.key');
  run('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '30',
    '-subj', '/CN=Custodian test CA', '-keyout', caKey, '-out', ca,
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
  const csr = join(dir, 'leaf.csr');
  run('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', '/CN=127.0.0.1',
    '-keyout', key, '-out', csr);
  const ext = join(dir, 'leaf.ext');
  writeFileSync(ext, 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n'
    + 'extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n');
  run('x509', '-req', '-in', csr, '-CA', ca, '-CAkey', caKey, '-CAcreateserial', '-days', '30',
    '-extfile', ext, '-out', cert);
  return { ca, key, cert };
}

const tls = ensureCertificates(args.dir);
const clients = args.clients ? JSON.parse(readFileSync(args.clients, 'utf8')) : [];

let handler = (req, res) => { res.statusCode = 503; res.end(); };
const server = https.createServer(
  { key: readFileSync(tls.key), cert: readFileSync(tls.cert) },
  (req, res) => handler(req, res),
);
await new Promise((resolve) => server.listen(Number(args.port), '127.0.0.1', resolve));
const issuer = `https://127.0.0.1:${server.address().port}`;

const configuration = {
  clients,
  // Any login/password is accepted by the dev interactions; the login becomes `sub`.
  async findAccount(ctx, sub) {
    return { accountId: sub, async claims() { return { sub }; } };
  },
  claims: { openid: ['sub'] },
  scopes: ['openid', 'offline_access'],
  acrValues: ['urn:custodian:acr:low', 'urn:custodian:acr:substantial', 'urn:custodian:acr:high'],
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: true },
    revocation: { enabled: true },
    introspection: { enabled: true },
    backchannelLogout: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    clientCredentials: { enabled: true },
    registration: {
      enabled: true,
      initialAccessToken: args['initial-access-token'],
      policies: {
        'custodian-test': (ctx, properties) => properties,
      },
    },
    registrationManagement: {
      enabled: true,
      // RFC 7592 PUT with a new secret: rotate it (incident response relies on this).
      rotateRegistrationAccessToken: true,
    },
  },
  ttl: {
    AccessToken: 3600,
    AuthorizationCode: 60,
    IdToken: 3600,
    RefreshToken: 14 * 24 * 3600,
    Interaction: 600,
    Session: 24 * 3600,
    Grant: 14 * 24 * 3600,
  },
  issueRefreshToken: async (ctx, client, code) => client.grantTypeAllowed('refresh_token')
    && code.scopes.has('offline_access'),
  cookies: { keys: ['custodian-test-cookie-key'] },
  // Tests receive back-channel logout on 127.0.0.1, which the SSRF guard refuses by default.
  fetch: (url, options) => globalThis.fetch(url, options),
  renderError(ctx, out, error) {
    ctx.type = 'json';
    ctx.body = out;
    if (!(error instanceof errors.OIDCProviderError)) console.error(error);
  },
};

const provider = new Provider(issuer, configuration);
provider.proxy = false;
handler = provider.callback();
console.log(JSON.stringify({ issuer, ca_file: tls.ca, initial_access_token: args['initial-access-token'] }));

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
