#!/usr/bin/env bash
# A throwaway CA, a server certificate for 127.0.0.1/localhost (NATS, the gateway, the demo
# view) and one client certificate (NATS mTLS), in <dir>: ca.pem, server.pem/.key, client.pem/.key. Made once: files
# already there are kept. Used by `make run` and by the tests.
set -euo pipefail
dir=${1:?usage: nats-tls.sh <dir> [common name of the CA]}
name=${2:-Custodian NATS CA}
mkdir -p "$dir"
chmod 700 "$dir"
cd "$dir"
[ -s ca.pem ] && [ -s server.pem ] && [ -s client.pem ] && exit 0
umask 077
ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
openssl req -x509 "${ec[@]}" -days 30 -subj "/CN=$name" -keyout ca.key -out ca.pem \
  -addext 'basicConstraints=critical,CA:TRUE' -addext 'keyUsage=critical,keyCertSign,cRLSign' 2>/dev/null
leaf() { # <name> <extended key usage> <extra extensions>
  openssl req "${ec[@]}" -subj "/CN=$1" -keyout "$1.key" -out "$1.csr" 2>/dev/null
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\n%s' "$2" "$3" >"$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
leaf server serverAuth 'subjectAltName=IP:127.0.0.1,DNS:localhost'
leaf client clientAuth ''
chmod 644 ca.pem server.pem client.pem
