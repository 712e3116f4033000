"""Text tools every stage shares, below shard, inspect and the loader: tokenizer loading
(``tokenizer``), chat templates with label masks (``templates``), the token-budget packer (``pack``)
and the special-token strings (``tokens``). Torch-free."""
