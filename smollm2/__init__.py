"""smollm2: pretrain SmolLM2-class language models on DeepSpeed."""

__version__ = "0.1.0"
