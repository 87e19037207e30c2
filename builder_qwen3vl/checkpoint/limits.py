"""Bounds on the sizes a checkpoint's config may give.

Far above any released Qwen3-VL (2B..235B-A22B: at most 94 text layers, hidden size 8192, 128 experts, a
151,936-token vocabulary, 262,144 positions), low enough that a typo or a hostile config.json fails while it
is read, in a second, and never in an allocation or a loop sized by it (og's rotary caches, for one, have
max_position_embeddings rows).
"""

MAX_LAYERS = 2048  # text num_hidden_layers, vision depth
MAX_WIDTH = 1 << 20  # hidden and intermediate sizes, head counts
MAX_VOCAB = 1 << 24
MAX_POSITIONS = 1 << 22  # max_position_embeddings, vision num_position_embeddings
MAX_EXPERTS = 4096
MAX_TOKEN_ID = (1 << 31) - 1
MAX_PATCH = 1024  # patch_size, in pixels
MAX_FACTOR = 64  # in_channels, temporal_patch_size, spatial_merge_size
MAX_PIXELS = (1 << 31) - 1  # image processor pixel budgets
