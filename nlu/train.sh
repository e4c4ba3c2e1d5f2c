#!/usr/bin/env bash
# Train the NLU model: bash nlu/train.sh [CONFIG] [NAME]
#   bash nlu/train.sh                              # config.yml -> models/hailong-nlu.tar.gz
#   bash nlu/train.sh configs/config_fast.yml hailong-nlu-fast   # for test suites
# Runs from nlu/ so that the custom component (components.*) is importable.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${RASA_VENV:-$HERE/../.rasa-venv}"
CONFIG="${1:-config.yml}"
NAME="${2:-hailong-nlu}"
cd "$HERE"
export TF_CPP_MIN_LOG_LEVEL=2 RASA_TELEMETRY_ENABLED=false SQLALCHEMY_SILENCE_UBER_WARNING=1
# Rasa caches featurizer outputs in nlu/.rasa/cache (~150 MB); off unless asked for.
export RASA_MAX_CACHE_SIZE="${RASA_MAX_CACHE_SIZE:-0}"
start=$(date +%s)
"$VENV/bin/rasa" train nlu -c "$CONFIG" --nlu data --domain domain.yml \
    --out models --fixed-model-name "$NAME"
echo "trained models/$NAME.tar.gz in $(( $(date +%s) - start )) s ($(du -h "models/$NAME.tar.gz" | cut -f1))"
