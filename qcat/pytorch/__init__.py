"""The engine's PyTorch backend: loading a base model and its adapter, and the forward passes (padded, packed,
compiled, CUDA graphs) that turn token rows into label logits. Everything that imports torch, transformers or peft at
serving time lives here; the rest of `qcat` is torch-free (docs/architecture.md)."""
