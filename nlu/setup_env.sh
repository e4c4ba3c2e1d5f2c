#!/usr/bin/env bash
# Create the Rasa environment (.rasa-venv, Python 3.10) and install the pinned lock.
#
#   bash nlu/setup_env.sh            # idempotent: skips when the lock is unchanged
#   FORCE=1 bash nlu/setup_env.sh    # reinstall anyway
#   RASA_VENV=/path bash nlu/setup_env.sh
#
# Rasa Open Source 3.6.21 needs Python 3.10 (TensorFlow 2.12); the bot itself runs on a
# modern Python and talks to Rasa over HTTP, so Rasa gets its own virtualenv.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
VENV="${RASA_VENV:-$ROOT/.rasa-venv}"
LOCK="$HERE/requirements-rasa.lock"
STAMP="$VENV/.lock-sha256"

# uv: on PATH, or the one ./hailong installs into .tools/venv.
if command -v uv >/dev/null 2>&1; then
    UV="$(command -v uv)"
elif [ -x "$ROOT/.tools/venv/bin/uv" ]; then
    UV="$ROOT/.tools/venv/bin/uv"
else
    echo "setup_env: 'uv' is neither on PATH nor in $ROOT/.tools/venv/bin." >&2
    echo "Run ./hailong once (it installs uv there), or install uv (pip install uv), and retry." >&2
    exit 2
fi
[ -f "$LOCK" ] || { echo "setup_env: missing $LOCK" >&2; exit 2; }

want_hash="$(sha256sum "$LOCK" | cut -d' ' -f1)"
if [ -z "${FORCE:-}" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want_hash" ] \
        && [ -x "$VENV/bin/rasa" ]; then
    echo "setup_env: $VENV is up to date with requirements-rasa.lock (sha256 ${want_hash:0:12}); nothing to do."
    exit 0
fi

# A venv with the wrong interpreter (e.g. left over from another Python) is rebuilt.
if [ -x "$VENV/bin/python" ]; then
    if ! "$VENV/bin/python" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 10) else 1)'; then
        echo "setup_env: $VENV is not Python 3.10; recreating it."
        rm -rf "$VENV"
    fi
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup_env: creating $VENV (Python 3.10)"
    # Prefer an interpreter already on the machine: $RASA_PYTHON, then pyenv's 3.10
    # (uv does not see pyenv versions that are installed but not activated), then let
    # uv search/download one.
    PY310="${RASA_PYTHON:-}"
    if [ -z "$PY310" ] && command -v pyenv >/dev/null 2>&1; then
        for cand in $(ls -d "$(pyenv root)"/versions/3.10.* 2>/dev/null | sort -V -r); do
            if [ -x "$cand/bin/python" ]; then PY310="$cand/bin/python"; break; fi
        done
    fi
    if ! "$UV" venv --python "${PY310:-3.10}" "$VENV"; then
        rm -rf "$VENV"
        cat >&2 <<'EOF'
setup_env: no Python 3.10 interpreter could be found or downloaded.
Rasa Open Source 3.6 requires Python 3.10 (TensorFlow 2.12 has no wheels for 3.11+).
Install one, then re-run this script, e.g.:
    uv python install 3.10        # needs internet access to python-build-standalone
    # or: pyenv install 3.10.13 / apt-get install python3.10 python3.10-venv
EOF
        exit 3
    fi
fi

echo "setup_env: installing requirements-rasa.lock into $VENV"
start=$(date +%s)
# --no-config: ignore any user/system uv config (indexes, constraints) so the lock is the
# single source of truth.
"$UV" pip install --no-config --python "$VENV/bin/python" -r "$LOCK"
end=$(date +%s)

# Telemetry off for this environment (the server is also started with
# RASA_TELEMETRY_ENABLED=false by the bot).
RASA_TELEMETRY_ENABLED=false TF_CPP_MIN_LOG_LEVEL=2 "$VENV/bin/rasa" telemetry disable >/dev/null 2>&1 || true

echo "setup_env: checking rasa --version"
TF_CPP_MIN_LOG_LEVEL=2 RASA_TELEMETRY_ENABLED=false "$VENV/bin/rasa" --version

echo "$want_hash" > "$STAMP"
echo "setup_env: done in $((end - start)) s; venv size $(du -sh "$VENV" | cut -f1)"
