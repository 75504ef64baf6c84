#!/usr/bin/env bash
# `make run`: nats-server with JetStream, the OpenID provider, migrations and `custodian up`
# on the embedded default (SQLite in .data/). Everything it starts stops with it (Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

DATA=.data
NATS_PORT=${NATS_PORT:-4222}
OP_PORT=${OP_PORT:-9443}
GATEWAY_PORT=${GATEWAY_PORT:-8080}
DEMO_VIEW_PORT=${DEMO_VIEW_PORT:-8081}
SMTP_PORT=${SMTP_PORT:-2525}
# Everything written here is the owner's only: secrets 0600 in a 0700 directory.
umask 077
mkdir -p "$DATA/tokens" "$DATA/op"
chmod 700 "$DATA"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# NATS as it is deployed: TLS with client certificates from a throwaway CA, an nkey per
# service, view and operator (made once, kept in .data/nats-identities/), and the permissions
# rendered from the table in code. Nobody connects without one of those keys.
bash scripts/tls.sh "$DATA/tls"
IDENTITIES="$DATA/nats-identities"
target/debug/custodian nats identity new --all --dir "$IDENTITIES" >/dev/null
[ -s "$IDENTITIES/view-demo.nk" ] || target/debug/custodian nats identity new --view demo --dir "$IDENTITIES" >/dev/null
target/debug/custodian nats server-config --dir "$IDENTITIES" --tls-cert "$DATA/tls/server.pem" \
  --tls-key "$DATA/tls/server.key" --tls-ca "$DATA/tls/ca.pem" --verify-clients -o "$DATA/nats-server.conf"
if port_open "$NATS_PORT"; then
  echo "using the NATS server already on port $NATS_PORT (it must run $DATA/nats-server.conf)"
else
  nats-server -c "$DATA/nats-server.conf" -js -a 127.0.0.1 -p "$NATS_PORT" --store_dir "$DATA/nats" >"$DATA/nats.log" 2>&1 &
  pids+=($!)
fi

# The DPO's mailbox: a real SMTP server (aiosmtpd) storing each message in .data/mail/.
mkdir -p "$DATA/mail"
.tools/venv/bin/python tests/smtp/smtp_server.py --dir "$DATA/mail" --port "$SMTP_PORT" >"$DATA/smtp.ready" 2>"$DATA/smtp.log" &
pids+=($!)

GATEWAY="https://127.0.0.1:${GATEWAY_PORT}"
# The demo platform's client at the OP; its secret is made once and kept in .data/.
[ -s "$DATA/op/client_secret" ] || openssl rand -hex 24 >"$DATA/op/client_secret"
cat >"$DATA/op/clients.json" <<JSON
[{"client_id":"custodian-demo","client_secret":"$(cat "$DATA/op/client_secret")",
  "redirect_uris":["${GATEWAY}/callback","https://127.0.0.1/callback"],
  "grant_types":["authorization_code","refresh_token","urn:ietf:params:oauth:grant-type:token-exchange"],"response_types":["code"],
  "token_endpoint_auth_method":"client_secret_basic",
  "backchannel_logout_uri":"${GATEWAY}/oidc/backchannel-logout",
  "post_logout_redirect_uris":["${GATEWAY}/"]}]
JSON
rm -f "$DATA/op/ready"
# The OP trusts the gateway's certificate (back-channel logout goes to it over HTTPS).
NODE_EXTRA_CA_CERTS="$DATA/tls/ca.pem" node tests/provider/provider.mjs --dir "$DATA/op" --port "$OP_PORT" --clients "$DATA/op/clients.json" \
  >"$DATA/op/ready" 2>"$DATA/op/provider.log" &
pids+=($!)
for _ in $(seq 1 100); do [ -s "$DATA/op/ready" ] && break; sleep 0.1; done
[ -s "$DATA/op/ready" ] || { echo "the OpenID provider did not start; see $DATA/op/provider.log" >&2; exit 1; }
ISSUER="https://127.0.0.1:${OP_PORT}"

# The vault's key-encryption key, made once (tokens at rest are sealed under it).
[ -s "$DATA/vault.key" ] || openssl rand -base64 32 >"$DATA/vault.key"

# The audit service's checkpoint signing key (Ed25519 seed) and identity key, made once.
[ -s "$DATA/audit-signing.key" ] || openssl rand -base64 32 >"$DATA/audit-signing.key"
[ -s "$DATA/audit-identity.key" ] || openssl rand -base64 32 >"$DATA/audit-identity.key"

# Machine tokens for the tour (shown below); only their SHA-256 goes into the config.
for role in platform ops dpo responder; do
  [ -s "$DATA/tokens/$role.token" ] || openssl rand -hex 24 >"$DATA/tokens/$role.token"
done
digest() { printf '%s' "$(cat "$1")" | sha256sum | cut -d' ' -f1; }
# Made by an older run before the umask: the owner's only, too.
chmod 600 "$DATA"/vault.key "$DATA"/audit-*.key "$DATA"/op/client_secret "$DATA"/tokens/*.token
cat >"$DATA/custodian.toml" <<TOML
# Written by \`make run\`; edit custodian.toml at the top level for your own settings.
database_url = "sqlite://$DATA/custodian.db"
nats_url = "tls://127.0.0.1:${NATS_PORT}"

[nats]
ca = "$DATA/tls/ca.pem"
client_cert = "$DATA/tls/client.pem"
client_key = "$DATA/tls/client.key"
credentials_dir = "$IDENTITIES"

[gateway]
listen = "127.0.0.1:${GATEWAY_PORT}"
tls = { cert_file = "$DATA/tls/server.pem", key_file = "$DATA/tls/server.key" }

[gateway.login]
public_url = "${GATEWAY}"

[gateway.oidc]
issuer = "$ISSUER"
audience = "custodian-demo"
ca_file = "$DATA/op/ca.pem"

# The registry the person's portal shows: who runs each platform (company name and
# enterprise number, seed Annex A), what its scopes let it see, its views. The demo's
# enterprise number is made up (it passes the check digits, nobody holds it).
[gateway.portal]
time_zone = "Europe/Brussels"
[[gateway.portal.platforms]]
platform_id = "custodian-demo"
name = "Custodian Demo"
legal_name = "Custodian Demo BV"
enterprise_number = "0999.999.922"
[gateway.portal.platforms.scopes.openid]
en = "Who you are: your identifier at the identity provider"
nl = "Wie u bent: uw identificatie bij de identiteitsprovider"
fr = "Qui vous êtes : votre identifiant auprès du fournisseur d’identité"
de = "Wer Sie sind: Ihre Kennung beim Identitätsanbieter"
[gateway.portal.platforms.scopes.offline_access]
en = "Fetch your profile for the demo app while you are signed out"
nl = "Uw profiel ophalen voor de demo-app terwijl u afgemeld bent"
fr = "Obtenir votre profil pour l’application de démonstration lorsque vous êtes déconnecté·e"
de = "Ihr Profil für die Demo-App abrufen, während Sie abgemeldet sind"
[[gateway.portal.platforms.views]]
view_id = "demo"
name = { en = "The demo app", nl = "De demo-app", fr = "L’application de démonstration", de = "Die Demo-App" }

[[gateway.machine_tokens]]
name = "demo-platform"
role = "platform"
platform_ids = ["custodian-demo"]
sha256 = "$(digest "$DATA/tokens/platform.token")"

[[gateway.machine_tokens]]
name = "demo-ops"
role = "ops"
sha256 = "$(digest "$DATA/tokens/ops.token")"

[[gateway.machine_tokens]]
name = "demo-dpo"
role = "dpo"
sha256 = "$(digest "$DATA/tokens/dpo.token")"

[[gateway.machine_tokens]]
name = "demo-responder"
role = "responder"
sha256 = "$(digest "$DATA/tokens/responder.token")"

[vault.keyring]
current = "local-1"
[[vault.keyring.keys]]
id = "local-1"
secret_file = "$DATA/vault.key"

[[vault.clients]]
issuer = "$ISSUER"
ca_file = "$DATA/op/ca.pem"
client_id = "custodian-demo"
client_secret_file = "$DATA/op/client_secret"
redirect_uri = "${GATEWAY}/callback"

[audit]
signing_key_id = "local-audit-1"
signing_key_file = "$DATA/audit-signing.key"
checkpoint_file = "$DATA/audit-checkpoints.jsonl"
checkpoint_every = 100
[audit.keyring]
current = "local-a1"
[[audit.keyring.keys]]
id = "local-a1"
secret_file = "$DATA/audit-identity.key"

[incident.dpo]
to = ["dpo@custodian.localhost"]
from = "custodian@custodian.localhost"
smtp_url = "smtp://127.0.0.1:${SMTP_PORT}"
contact = "The DPO of the demo platform, dpo@custodian.localhost"

[demo_view]
enabled = true
listen = "127.0.0.1:${DEMO_VIEW_PORT}"
tls = { cert_file = "$DATA/tls/server.pem", key_file = "$DATA/tls/server.key" }
view_id = "demo"
platform_id = "custodian-demo"
userinfo_url = "$ISSUER/me"
ca_file = "$DATA/op/ca.pem"
portal_url = "${GATEWAY}"
TOML
chmod 600 "$DATA/custodian.toml"
export CUSTODIAN_CONFIG="$DATA/custodian.toml"

target/debug/custodian migrate >/dev/null
for _ in $(seq 1 100); do port_open "$NATS_PORT" && break; sleep 0.1; done
target/debug/custodian nats provision >/dev/null
target/debug/custodian up &
pids+=($!)
for _ in $(seq 1 100); do curl -fs --cacert "$DATA/tls/ca.pem" "${GATEWAY}/readyz" >/dev/null 2>&1 && break; sleep 0.1; done

cat <<TOUR

  Custodian is up: gateway https://127.0.0.1:${GATEWAY_PORT}, NATS tls://127.0.0.1:${NATS_PORT}
  (client certificates and one nkey per identity: $IDENTITIES),
  OpenID provider ${ISSUER} (CA in $DATA/op/ca.pem), database $DATA/custodian.db,
  demo view https://127.0.0.1:${DEMO_VIEW_PORT}.

  Watch a revocation (a browser; the certificates are from throwaway CAs, $DATA/tls/ca.pem
  and $DATA/op/ca.pem: accept them):
    1. https://127.0.0.1:${GATEWAY_PORT}/login — sign in at the OP as anyone (any password), consent.
    2. https://127.0.0.1:${DEMO_VIEW_PORT}/ — fetch your profile: the view gets your token from
       the vault and holds what it fetched in memory, for you alone.
    3. https://127.0.0.1:${GATEWAY_PORT}/ — withdraw the consent and confirm: the token is revoked at
       the OP, the view erases the data and acks; the receipt shows each step as it is done.

  The operators' console: https://127.0.0.1:${GATEWAY_PORT}/console — sign in with the token in
  $DATA/tokens/ops.token (health, revocations, sweeps, incidents) or dpo.token (the privacy log).

  Try, in another terminal at the top of the repository:
    export CUSTODIAN_CONFIG=$DATA/custodian.toml
    target/debug/custodian events publish examples/consent-granted.json
    target/debug/custodian consents list
    target/debug/custodian consents show --issuer https://op.example --subject demo-person --platform tp-demo
    target/debug/custodian sweep run --dry-run
    curl -s --cacert $DATA/tls/ca.pem -H "Authorization: Bearer \$(cat $DATA/tokens/ops.token)" https://127.0.0.1:${GATEWAY_PORT}/v1/consents
    curl -s --cacert $DATA/tls/ca.pem https://127.0.0.1:${GATEWAY_PORT}/metrics | grep custodian_
  Report an incident; the DPO's e-mails land in $DATA/mail/:
    target/debug/custodian incident report --kind data_leak --platform custodian-demo --summary "laptop lost"
    target/debug/custodian incident show <incident id>
  Ctrl-C stops everything.

TOUR
wait "${pids[-1]}"
