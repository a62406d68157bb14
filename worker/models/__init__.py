"""Model assemblies (Qwen3-Next target and its MTP draft head) and the architecture registry."""
