// The real OpenID provider (panva's oidc-provider, OpenID Certified) that Custodian's tests
// and `make run` talk to. Served over TLS with a throwaway CA made at start, because the
// Rust OIDC client refuses plain-http revocation endpoints.
//
// Usage: node provider.mjs --dir <state dir> [--port <port>] [--clients <clients.json>]
// Prints one JSON line {"issuer": ..., "ca_file": ..., "initial_access_token": ...} once ready.
// State lives in memory: a restart forgets clients, grants and tokens.

import { execFileSync } from 'node:child_process';
import { createPrivateKey, randomBytes, randomUUID } from 'node:crypto';
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

// The OP's signing key, as a PEM file tests can read: they sign security event tokens and
// logout tokens "as the OP" to exercise Custodian's receivers with good and bad tokens.
function ensureSigningKey(dir) {
  const pem = join(dir, 'op-signing-key.pem');
  if (!existsSync(pem)) {
    execFileSync('openssl', ['genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048', '-out', pem],
      { stdio: ['ignore', 'ignore', 'pipe'] });
  }
  const jwk = createPrivateKey(readFileSync(pem)).export({ format: 'jwk' });
  return { pem, jwk: { ...jwk, kid: 'custodian-test-op-rs256', use: 'sig', alg: 'RS256' } };
}
const signing = ensureSigningKey(args.dir);
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
  jwks: { keys: [signing.jwk] },
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
      initialAccessToken: true,
      policies: {
        // RFC 7592 PUT issues a new client_secret (the old one stops working at once): the
        // client-secret rotation of incident response relies on it.
        'custodian-rotate-on-update': (ctx, properties) => {
          if (ctx.method === 'PUT') properties.client_secret = randomBytes(32).toString('base64url');
        },
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
  fetch: (url, options) => {
    // Without the SSRF-guarding dispatcher oidc-provider adds (it refuses 127.0.0.1).
    const { dispatcher, ...rest } = options;
    return globalThis.fetch(url, rest);
  },
  renderError(ctx, out, error) {
    ctx.type = 'json';
    ctx.body = out;
    if (!(error instanceof errors.OIDCProviderError)) console.error(error);
  },
};

const provider = new Provider(issuer, configuration);
provider.proxy = false;
// Unexpected failures, for the test log (see testkit: custodian-op-<pid>.log in the temp dir).
provider.on('server_error', (ctx, err) => console.error('server_error', err));
provider.on('backchannel.error', (ctx, err, client) => console.error('backchannel.error', client?.clientId, err?.message, err?.cause));
provider.on('backchannel.success', (ctx, client) => console.error('backchannel.success', client?.clientId));
provider.on('end_session.success', () => console.error('end_session.success'));
provider.on('end_session.error', (ctx, err) => console.error('end_session.error', err?.message));
provider.on('grant.error', (ctx, err) => { if (!(err instanceof errors.OIDCProviderError)) console.error('grant.error', err); });

// RFC 8693 token exchange for legacy SAML holder-of-key assertions (the Belgian eHealth STS
// issues SAML 1.1): a person's access token in, a SAML assertion out. The assertion here is a
// minimal unsigned stand-in with the fields Custodian reads (id, validity, subject, the
// holder-of-key confirmation method).
const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const SAML_TYPES = {
  'urn:ietf:params:oauth:token-type:saml1': 'saml1',
  'urn:ietf:params:oauth:token-type:saml2': 'saml2',
};
provider.registerGrantType(TOKEN_EXCHANGE, async (ctx) => {
  const { params, client } = ctx.oidc;
  if (params.subject_token_type !== 'urn:ietf:params:oauth:token-type:access_token') {
    throw new errors.InvalidRequest('subject_token_type must be urn:ietf:params:oauth:token-type:access_token');
  }
  const kind = SAML_TYPES[params.requested_token_type];
  if (!kind) throw new errors.InvalidRequest('requested_token_type must be the saml1 or saml2 token type');
  const subjectToken = await ctx.oidc.provider.AccessToken.find(params.subject_token);
  if (!subjectToken || subjectToken.isExpired) throw new errors.InvalidGrant('subject_token is invalid or expired');
  if (subjectToken.clientId !== client.clientId) throw new errors.InvalidGrant('subject_token belongs to another client');
  const id = `_${randomUUID()}`;
  const now = new Date();
  const until = new Date(now.getTime() + 300 * 1000);
  const who = subjectToken.accountId;
  const xml = kind === 'saml1'
    ? `<saml:Assertion xmlns:saml="urn:oasis:names:tc:SAML:1.0:assertion" MajorVersion="1" MinorVersion="1" AssertionID="${id}" Issuer="${issuer}" IssueInstant="${now.toISOString()}"><saml:Conditions NotBefore="${now.toISOString()}" NotOnOrAfter="${until.toISOString()}"/><saml:AuthenticationStatement AuthenticationInstant="${now.toISOString()}" AuthenticationMethod="urn:oasis:names:tc:SAML:1.0:am:unspecified"><saml:Subject><saml:NameIdentifier>${who}</saml:NameIdentifier><saml:SubjectConfirmation><saml:ConfirmationMethod>urn:oasis:names:tc:SAML:1.0:cm:holder-of-key</saml:ConfirmationMethod></saml:SubjectConfirmation></saml:Subject></saml:AuthenticationStatement></saml:Assertion>`
    : `<saml2:Assertion xmlns:saml2="urn:oasis:names:tc:SAML:2.0:assertion" Version="2.0" ID="${id}" IssueInstant="${now.toISOString()}"><saml2:Issuer>${issuer}</saml2:Issuer><saml2:Subject><saml2:NameID>${who}</saml2:NameID><saml2:SubjectConfirmation Method="urn:oasis:names:tc:SAML:2.0:cm:holder-of-key"/></saml2:Subject><saml2:Conditions NotBefore="${now.toISOString()}" NotOnOrAfter="${until.toISOString()}"/></saml2:Assertion>`;
  ctx.body = {
    access_token: Buffer.from(xml).toString('base64url'),
    issued_token_type: params.requested_token_type,
    token_type: 'N_A',
    expires_in: 300,
  };
}, new Set(['subject_token', 'subject_token_type', 'requested_token_type', 'audience', 'resource', 'scope']));
handler = provider.callback();
// Clients registered with this token get the rotation policy (kept by their registration
// access tokens for RFC 7592 updates).
const initialAccessToken = await new provider.InitialAccessToken({ policies: ['custodian-rotate-on-update'] }).save();
console.log(JSON.stringify({
  issuer, ca_file: tls.ca, initial_access_token: initialAccessToken, signing_key_file: signing.pem,
}));

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
