#!/usr/bin/env bash
# Installs what the integration tests drive, on a fresh Debian machine; run inside the project's venv.
# Each part is idempotent; the deployment and UI parts live beside this file.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
for part in "$here"/deploy-deps.sh "$here"/ui-deps.sh; do
  if [[ -f "$part" ]]; then
    bash "$part"
  fi
done
