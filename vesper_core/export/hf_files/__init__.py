"""Source files written into an exported Hugging Face folder (transformers loads them with
``trust_remote_code=True``). They are self-contained: only torch and transformers, never vesper."""
