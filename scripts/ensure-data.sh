#!/usr/bin/env bash
# Make sure the Fashion-MNIST IDX files are on this machine (Debian package dataset-fashion-mnist).
set -euo pipefail
dir=/usr/share/datasets/fashion-mnist
for d in "${SJALIGN_DATA:-}" "${SJALIGN_DATA:+$SJALIGN_DATA/fashion-mnist}" "$dir"; do
  if [ -n "$d" ] && [ -f "$d/train-images-idx3-ubyte.gz" ] && [ -f "$d/train-labels-idx1-ubyte.gz" ] \
     && [ -f "$d/t10k-images-idx3-ubyte.gz" ] && [ -f "$d/t10k-labels-idx1-ubyte.gz" ]; then
    exit 0
  fi
done
echo "Fashion-MNIST not found: installing the Debian package dataset-fashion-mnist" >&2
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
if ! { $sudo apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
       { $sudo apt-get update -q >/dev/null 2>&1 && $sudo apt-get install -y -q dataset-fashion-mnist >/dev/null; }; }; then
  echo "error: could not install dataset-fashion-mnist; put the four IDX .gz files in a folder and set SJALIGN_DATA to it" >&2
  exit 1
fi
