"""Block-causal DiT denoiser with a block-wise KV cache (LMDM, Novack et al. 2026, arXiv 2605.22717).

Tokens are latent frames (model space: codec latents divided by ``latent_scale``). Two kinds of token:
clean context tokens (diffusion time 0, no conditioning) and noisy target tokens (their own time ``t`` plus the
conditioning vector ``cond``).
Conditioning enters through per-token adaLN modulation, so the keys and values of clean tokens depend on the
context audio alone: the cache is exact and a conditioning change needs no rebuild.

Attention (frames; ``C = config.context_frames``; a block starting at frame ``s`` with ``L`` frames):
- clean block tokens attend to clean frames ``[s - C, s + L)``;
- noisy target tokens attend to clean frames ``[s - C, s)`` and to their own block;
- clean tokens never attend to noisy ones (block-causal LMDM) -- except in the ``bidirectional``
  outpainting baseline, where context and target attend to each other with full attention.

Rotary positions are relative inside the window: a stream keeps keys un-rotated in a fixed-size cache and
rotates them by slot (``0..C-1``, target at ``C..``), so positions stay bounded in an endless stream.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import CONFIG_NAME, WEIGHTS_NAME, ConfigError, ModelConfig
from .files import atomic_write

Cache = dict[str, torch.Tensor]
KINDS_IS_TARGET = torch.tensor([False, True])  # the two token kinds of a streaming pass: clean context, target


def cache_names(config: ModelConfig) -> list[str]:
    """Names of the KV-cache tensors, in the ONNX / Hugging Face Optimum convention."""
    names = []
    for i in range(config.depth):
        names += [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
    return names + ["context_valid"]


def rf_skip(t: torch.Tensor) -> torch.Tensor:
    """Velocity of the Gaussian-optimal denoiser for unit-variance data: v = skip(t) * x_t.

    With x_t = (1 - t) x0 + t n and x0, n ~ N(0, 1): E[n - x0 | x_t] = (2t - 1) / ((1 - t)^2 + t^2) x_t.
    The network predicts the residual, so a narrow model never has to carry the full-rank noise path.
    """
    return (2 * t - 1) / ((1 - t) ** 2 + t**2)


def timestep_features(t: torch.Tensor, dim: int = 128) -> torch.Tensor:
    """Sinusoidal features of t in [0, 1]: [...] -> [..., dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = (t.float() * 1000.0)[..., None] * freqs
    return torch.cat([angles.cos(), angles.sin()], -1)


def rotary_angles(positions: torch.Tensor, half: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE tables for integer positions [N], computed once per forward: cos [N, 2 half] and the signed sin
    [N, 2 half] (-sin | sin) that :func:`rotary` multiplies with the half-swapped input."""
    inv = base ** (-torch.arange(half, device=positions.device, dtype=torch.float32) / half)
    angles = positions.float()[:, None] * inv[None, :]  # [N, half]
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([cos, cos], -1), torch.cat([-sin, sin], -1)


def rotary(x: torch.Tensor, angles: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate-half RoPE: [x1 cos - x2 sin, x2 cos + x1 sin]. x [B, H, N, Dh], angles of those N positions."""
    cos, signed_sin = angles
    half = x.shape[-1] // 2
    return x * cos + torch.cat([x[..., half:], x[..., :half]], -1) * signed_sin


def sequence_mask(n_frames: int, block_frames: int, context_frames: int, device=None) -> torch.Tensor:
    """Block-causal mask over [clean frames ; noisy frames] (2T tokens): True where a query may attend."""
    f = torch.arange(n_frames, device=device)
    start = (f // block_frames) * block_frames  # block start of each frame
    q_start, k = start[:, None], f[None, :]
    clean_to_clean = (k >= q_start - context_frames) & (k < q_start + block_frames)
    noisy_to_clean = (k >= q_start - context_frames) & (k < q_start)
    noisy_to_noisy = start[:, None] == start[None, :]
    top = torch.cat([clean_to_clean, torch.zeros_like(clean_to_clean)], 1)
    bottom = torch.cat([noisy_to_clean, noisy_to_noisy], 1)
    return torch.cat([top, bottom], 0)  # [2T, 2T]


class RMSNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.heads, self.head_dim, self.rope_base = config.heads, config.head_dim, config.rope_base
        self.qkv = nn.Linear(config.width, 3 * config.width)
        self.out = nn.Linear(config.width, config.width)
        self.q_norm, self.k_norm = RMSNorm(self.head_dim), RMSNorm(self.head_dim)

    def forward(self, x, angles, mask, past_k=None, past_v=None, past_angles=None):
        """x [B, N, W]; mask: additive float bias [N, N + P] or [B, 1, N, N + P] (0 or -inf); angles of the N
        tokens (and of the P cached keys).
        Returns (out [B, N, W], k, v un-rotated [B, H, N, Dh])."""
        b, n, w = x.shape
        # [B, N, 3W] -> 3 x [B, H, N, Dh]
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        new_k, new_v = k, v
        q, k = rotary(q, angles), rotary(k, angles)
        if past_k is not None:
            # keys of the cache are stored un-rotated; rotate them by slot: [B, H, P, Dh]
            k = torch.cat([rotary(past_k, past_angles), k], 2)  # [B, H, P + N, Dh]
            v = torch.cat([past_v, v], 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.head_dim**-0.5)  # [B, H, N, Dh]
        y = y.transpose(1, 2).reshape(b, n, w)  # [B, H, N, Dh] -> [B, N, W]
        return self.out(y), new_k, new_v


class DiTBlock(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        w = config.width
        self.norm1 = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(config)
        hidden = int(w * config.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(w, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, w))
        # adaLN-single (PixArt-alpha): one shared modulation MLP, plus a learned per-layer offset
        self.modulation_offset = nn.Parameter(torch.zeros(6, w))

    def forward(self, h, modulation, angles, mask, past_k=None, past_v=None, past_angles=None):
        # modulation [B, N, 6, W] -> six [B, N, W]
        shift1, scale1, gate1, shift2, scale2, gate2 = (modulation + self.modulation_offset).unbind(2)
        a, k, v = self.attn(self.norm1(h) * (1 + scale1) + shift1, angles, mask, past_k, past_v, past_angles)
        h = h + gate1 * a
        h = h + gate2 * self.mlp(self.norm2(h) * (1 + scale2) + shift2)
        return h, k, v


class Denoiser(nn.Module):
    """Rectified-flow velocity model over latent frames. See the module docstring for the attention layout."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        w = config.width
        self.in_proj = nn.Linear(config.latent_dim, w)
        self.time_mlp = nn.Sequential(nn.Linear(128, w), nn.SiLU(), nn.Linear(w, w))
        self.cond_proj = nn.Linear(config.cond_dim, w, bias=False)
        # unit-norm sentence embeddings are scaled to unit-order entries, like the tag weights
        gain = torch.ones(config.cond_dim)
        if "text" in config.cond_layout:
            start, stop = config.cond_layout["text"]
            gain[start:stop] = math.sqrt(config.text_dim)
        self.register_buffer("cond_gain", gain, persistent=False)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(w, 6 * w))
        self.blocks = nn.ModuleList(DiTBlock(config) for _ in range(config.depth))
        self.final_norm = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(w, 2 * w))
        self.out_proj = nn.Linear(w, config.latent_dim)
        # per-channel latent scale (set from training data; ones means "not fitted")
        self.register_buffer("latent_scale", torch.ones(config.latent_dim))
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # adaLN-Zero: every residual branch and the output start at zero
        for lin in (self.modulation[-1], self.final_modulation[-1], self.out_proj):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    # ---- core -----------------------------------------------------------------------------------
    def _run(self, x, kind_t, kind_is_target, token_kind, cond, positions, mask, past: Cache | None = None,
             past_positions=None, layers: int | None = None):
        """Shared transformer pass over tokens x [B, N, D] of a few kinds (clean context, or a target block with its
        time): kind_t [B, K], kind_is_target [K] bool, token_kind [N] (long). Conditioning is computed once per
        kind, then gathered per token. mask bool [N, N + P] or [B, 1, N, N + P] (True: may attend), turned once
        into the additive bias every layer shares. Returns (velocity [B, N, D], per-layer (k, v) of these tokens);
        with ``layers``, only the first ``layers`` DiT blocks run and their hidden state [B, N, W] replaces the
        velocity."""
        b, n, _ = x.shape
        mask = torch.zeros(mask.shape, device=x.device).masked_fill(~mask, float("-inf"))
        # [B, K, W]: time for every kind, cond for target kinds only (clean K/V stay free of it)
        per_kind = self.time_mlp(timestep_features(kind_t))
        per_kind = per_kind + kind_is_target.float()[None, :, None] * self.cond_proj(cond * self.cond_gain)[:, None, :]
        modulation = self.modulation(per_kind)[:, token_kind].view(b, n, 6, -1)  # [B, K, 6W] -> [B, N, 6, W]
        h = self.in_proj(x)
        half, base = self.config.head_dim // 2, self.config.rope_base
        angles = rotary_angles(positions, half, base)
        past_angles = rotary_angles(past_positions, half, base) if past is not None else None
        new_kv = []
        for i, block in enumerate(self.blocks[:layers]):
            pk = past[f"past_key_values.{i}.key"] if past is not None else None
            pv = past[f"past_key_values.{i}.value"] if past is not None else None
            h, k, v = block(h, modulation, angles, mask, pk, pv, past_angles)
            new_kv.append((k, v))
        if layers is not None:
            return h, new_kv
        shift, scale = self.final_modulation(per_kind)[:, token_kind].chunk(2, -1)  # [B, K, 2W] -> 2 x [B, N, W]
        out = self.out_proj(self.final_norm(h) * (1 + scale) + shift)
        return out + rf_skip(kind_t)[:, token_kind, None] * x, new_kv

    # ---- training / reference forwards ----------------------------------------------------------
    def velocity_sequence(self, clean, noisy, t_blocks, cond, block_frames: int):
        """Full block-causal forward (LMDM training, and the reference the stream must equal).

        clean, noisy [B, T, D] with T a multiple of block_frames; t_blocks [B, T // block_frames]; cond [B, S].
        Returns the velocity of every noisy frame [B, T, D].
        """
        b, n_frames, _ = clean.shape
        if n_frames % block_frames:
            raise ValueError(f"sequence of {n_frames} frames is not a multiple of block_frames {block_frames}")
        dev = clean.device
        # kinds: 0 = clean, 1 + j = the noisy frames of block j
        kind_t = torch.cat([torch.zeros_like(t_blocks[:, :1]), t_blocks], 1)  # [B, 1 + n_blocks]
        kind_is_target = torch.arange(kind_t.shape[1], device=dev) > 0
        frames = torch.arange(n_frames, device=dev)
        token_kind = torch.cat([torch.zeros_like(frames), 1 + frames // block_frames])  # [2T]
        positions = frames.repeat(2)
        mask = sequence_mask(n_frames, block_frames, self.config.context_frames, dev)
        v, _ = self._run(torch.cat([clean, noisy], 1), kind_t, kind_is_target, token_kind, cond, positions, mask)
        return v[:, n_frames:]

    def velocity_outpaint(self, context, x, t, cond):
        """One target block after a clean context, recomputing the context (the outpainting baseline).

        context [B, C', D] (C' <= context_frames), x [B, L, D], t [B]. Attention is full in ``bidirectional``
        mode; otherwise the context never attends to the target. Returns velocity [B, L, D].
        """
        return self._outpaint(context, x, t, cond)

    def block_features(self, context, x, t, cond, layers: int):
        """Hidden state [B, L, W] of the target block x after the first ``layers`` DiT blocks, laid out as in
        :meth:`velocity_outpaint`: what the ARC-Forcing discriminator scores (Novack et al. 2026)."""
        return self._outpaint(context, x, t, cond, layers)

    def _outpaint(self, context, x, t, cond, layers: int | None = None):
        c = context.shape[1]
        n = c + x.shape[1]
        is_target = torch.arange(n, device=x.device) >= c
        positions = torch.arange(n, device=x.device) + (self.config.context_frames - c)
        if self.config.attention == "bidirectional":
            mask = torch.ones(n, n, dtype=torch.bool, device=x.device)
        else:
            mask = ~(~is_target[:, None] & is_target[None, :])  # context never attends to the target
        kind_t = torch.stack([torch.zeros_like(t), t], 1)  # kinds: 0 = context, 1 = target
        out, _ = self._run(torch.cat([context, x], 1), kind_t, KINDS_IS_TARGET.to(x.device), is_target.long(), cond,
                           positions, mask, layers=layers)
        return out[:, c:]

    # ---- streaming with the block-wise KV cache -------------------------------------------------
    def empty_cache(self, batch: int) -> Cache:
        cfg = self.config
        p = next(self.parameters())
        shape = (batch, cfg.heads, cfg.context_frames, cfg.head_dim)
        cache = {}
        for i in range(cfg.depth):
            cache[f"past_key_values.{i}.key"] = torch.zeros(shape, dtype=p.dtype, device=p.device)
            cache[f"past_key_values.{i}.value"] = torch.zeros(shape, dtype=p.dtype, device=p.device)
        cache["context_valid"] = torch.zeros(batch, cfg.context_frames, dtype=torch.bool, device=p.device)
        return cache

    def step(self, cache: Cache, context, x, t, cond) -> tuple[torch.Tensor, Cache]:
        """One fused streaming pass (the LMDM code folds the finished block into the next block's first step).

        Slides the clean frames ``context`` [B, N, D] into the cache (window of C frames) and returns the velocity
        of the target block ``x`` [B, L, D] at times ``t`` [B] against the slid cache, with the new cache.
        N or L may be 0. Tokens are [context ; target]; keys are [cache slots ; context ; target]:
        - context queries see the valid cache slots and the whole context (the finished block, full attention);
        - target queries see what stays in the window after the slide (the last C of cache + context) and
          their own block. Positions: slots 0..C-1, context C..C+N-1, target C+N.. (RoPE is relative, so this
          equals the slid layout exactly).
        """
        b, n, _ = context.shape
        length = x.shape[1]
        c = self.config.context_frames
        dev = x.device
        slots = torch.arange(c + n + length, device=dev)
        # [B, C + N] valid keys among cache slots and context
        valid = torch.cat([cache["context_valid"], torch.ones(b, n, dtype=torch.bool, device=dev)], 1)
        in_window = valid & (slots[None, : c + n] >= n)  # target queries: the last C of cache + context
        context_rows = torch.cat([valid, torch.zeros(b, length, dtype=torch.bool, device=dev)], 1)  # [B, C+N+L]
        target_rows = torch.cat([in_window, torch.ones(b, length, dtype=torch.bool, device=dev)], 1)
        # [B, N + L, C + N + L] -> [B, 1, N + L, C + N + L]
        mask = torch.cat([context_rows[:, None, :].expand(b, n, c + n + length),
                          target_rows[:, None, :].expand(b, length, c + n + length)], 1)[:, None]
        kind_t = torch.stack([torch.zeros_like(t), t], 1)  # kinds: 0 = context, 1 = target
        token_kind = (slots[c:] >= c + n).long()  # [N + L]
        v, new_kv = self._run(torch.cat([context, x], 1), kind_t, KINDS_IS_TARGET.to(dev), token_kind, cond, slots[c:],
                              mask, cache, slots[:c])
        out = {}
        for i, (k, val) in enumerate(new_kv):
            for name, new in ((f"past_key_values.{i}.key", k), (f"past_key_values.{i}.value", val)):
                out[name] = torch.cat([cache[name], new[:, :, :n]], 2)[:, :, n:]  # [B, H, C, Dh]
        out["context_valid"] = valid[:, n:]
        return v[:, n:], out

    def velocity_cached(self, cache: Cache, x, t, cond):
        """Velocity of a target block [B, L, D] at times t [B] against the cached context."""
        return self.step(cache, x[:, :0], x, t, cond)[0]

    def append_context(self, cache: Cache, frames) -> Cache:
        """Run a finished clean block [B, N, D] against the cache and slide it into a new cache (window of C frames)."""
        b = frames.shape[0]
        cond = torch.zeros(b, self.config.cond_dim, device=frames.device)
        return self.step(cache, frames, frames[:, :0], torch.zeros(b, device=frames.device), cond)[1]

    def with_conditioning(self, **changes) -> "Denoiser":
        """A copy whose conditioning vector is re-laid out by config ``changes`` (text_dim, text_encoder,
        accompaniment): every weight is kept, the conditioning projection's columns move to their new places and new
        parts start at zero, so the copy computes exactly what this model does until it is trained."""
        new = Denoiser(self.config.replace(**changes)).to(self.latent_scale.device)
        state = self.state_dict()
        old_w = state.pop("cond_proj.weight")  # [W, old cond_dim]
        new.load_state_dict(state, strict=False)
        w = torch.zeros_like(new.cond_proj.weight)  # [W, new cond_dim]
        for part, (start, stop) in self.config.cond_layout.items():
            span = new.config.cond_layout.get(part)
            if span is not None and span[1] - span[0] == stop - start:
                new_start = span[0]
                w[:, new_start:new_start + stop - start] = old_w[:, start:stop]
        with torch.no_grad():
            new.cond_proj.weight.copy_(w)
        return new

    # ---- persistence ----------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path, half: bool = False) -> Path:
        """``config.json`` + ``model.safetensors``; ``half`` stores the weights as float16 (half the size: the
        shipped model, whose size is bounded; they load back into float32)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.save(folder)
        dtype = torch.float16 if half else None
        state = {k: v.detach().to(dtype=dtype or v.dtype).contiguous().cpu() for k, v in self.state_dict().items()}
        with atomic_write(folder / WEIGHTS_NAME) as partial:
            save_file(state, str(partial), metadata={"format": "pt", "config": CONFIG_NAME})
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, map_location: str = "cpu", **config_overrides) -> "Denoiser":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(folder)
        config = ModelConfig.load(folder)
        if config_overrides:
            config = config.replace(**config_overrides)
        path = folder / WEIGHTS_NAME
        if not path.is_file():
            raise ConfigError(f"{path}: missing weights file")
        try:
            state = load_file(str(path), device=map_location)
        except (SafetensorError, OSError) as e:
            raise ConfigError(f"{path}: not a readable safetensors file ({e})") from None
        model = cls(config)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ConfigError(f"{path}: weights do not match {folder / CONFIG_NAME}: "
                              f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
        return model.to(map_location).eval()
