# Sourced by the Makefile's scripts: puts the project's tools first on PATH.
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
export PATH="$PWD/.tools/venv/bin:${pg_bin:+$pg_bin:}$PATH"
