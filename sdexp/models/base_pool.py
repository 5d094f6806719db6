"""One loaded base per sweep worker, lent to trial after trial instead of reloaded for each.

A sweep's trials all start from the same frozen base; loading it (and moving it to the device) is
most of a trial's set-up. Inside ``reusing_bases()`` (what ``sdexp sweep`` runs its trials in)
``POOL.borrow`` lends the pooled base when its key matches, and ``POOL.release`` takes it back
after the trial: the trial's adapters are removed (peft layers replaced by the layers they wrap,
textual inversion's embedding wrappers by the tables they wrap, tokenizers with added tokens by
pristine copies), gradient checkpointing, accelerate's forward wrappers, compiled calls and
channels_last weights are undone, every module is frozen and in eval mode again, and the noise
scheduler is rebuilt from its config.
Then the base is checked against what it was at load (``BaseState``); anything that differs drops
it, and the next trial loads a fresh one. A method that trains the base's own weights (full
fine-tune, DreamBooth ``adapter=full``) takes the pooled base for good: it is never given back.

Outside ``reusing_bases()`` (a single run, ``sdexp sweep --no-reuse-base``) every borrow loads.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from sdexp.models.loading import BaseModel, load_base


def base_key(cfg, weight_dtype: torch.dtype, device: torch.device) -> str:
    """Everything that decides the loaded weights: the model's path and content fingerprint, the
    family, variant, dtype, VAE (and its fingerprint), VAE dtype, prediction type, zero-SNR, device."""
    from sdexp.models.fingerprint import model_fingerprint
    from sdexp.models.loading import resolve_model

    m = cfg.model
    path = resolve_model(m.path or m.name, allow_pickle=m.allow_pickle)
    vae = None
    if m.vae:
        from pathlib import Path

        vae_path = Path(m.vae).expanduser().resolve()
        vae = [str(vae_path), model_fingerprint(vae_path) if vae_path.exists() else None]
    fields = {
        "model": str(path.resolve()),
        "fingerprint": model_fingerprint(path),
        "family": m.family,
        "variant": m.variant,
        "dtype": str(weight_dtype),
        "vae": vae,
        "vae_dtype": m.vae_dtype,
        "prediction_type": m.prediction_type,
        "zero_terminal_snr": bool(cfg.train.zero_terminal_snr),
        "allow_pickle": bool(m.allow_pickle),
        "device": str(device),
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def load_run_base(cfg, weight_dtype: torch.dtype) -> BaseModel:
    """The run's base as ``cfg.model`` and ``cfg.train`` describe it, loaded onto the CPU."""
    m = cfg.model
    return load_base(
        m.path or m.name,
        family=m.family,
        variant=m.variant,
        dtype=weight_dtype,
        prediction_type=m.prediction_type,
        zero_terminal_snr=cfg.train.zero_terminal_snr,
        allow_pickle=m.allow_pickle,
        vae=m.vae,
        vae_dtype=m.vae_dtype,
    )


# ----- the state a base must be back in --------------------------------------------------------
def tensor_checksums(base: BaseModel) -> torch.Tensor:
    """Per tensor (every parameter and buffer of every component): its sum and its L2 norm,
    accumulated in float32, as one [N, 2] float32 tensor on the CPU (one host sync for all).

    Why these: they read each element once with torch's vectorised reductions (about 2 s for SD 1.5
    on one CPU thread, milliseconds on a GPU; float64 accumulation measured 20x slower on the CPU)
    and need no copy of the weights. What goes wrong when a base is restored is gross: an adapter
    left in or merged, a dtype round trip, an optimizer step over a tensor; each moves thousands
    of elements. Measured on a 10M-element tensor of std 0.02: one weight changed by 1e-5 changes
    the sum; a change of 1e-6 to one weight can be lost in the rounding, which is the price of
    float32 accumulation. The module structure (``structure``) is compared exactly besides."""
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for module in base.modules:
        for tensor in module.state_dict(keep_vars=True).values():
            t = tensor.detach()
            t = t if t.is_floating_point() else t.double()
            acc = torch.float64 if t.dtype == torch.float64 else torch.float32
            pair = torch.stack([t.sum(dtype=acc), torch.linalg.vector_norm(t, dtype=acc)]).float()
            by_device.setdefault(t.device, []).append(pair)
    if not by_device:
        return torch.zeros(0, 2)
    return torch.cat([torch.stack(pairs).cpu() for pairs in by_device.values()])


def structure(base: BaseModel) -> tuple:
    """What is not in the weights but changes what a trial computes: each submodule's class,
    mode, gradient checkpointing, attention processor, instance forward (accelerate's autocast
    wrapper), compiled call and hooks; each tensor's name, shape, strides (memory format), dtype,
    device and requires_grad;
    the components' own attributes (peft's ``peft_config``); tokenizer sizes; the scheduler config."""
    rows = []
    for c, module in enumerate(base.modules):
        rows.append((c, "attrs", tuple(sorted(module.__dict__))))
        for name, sub in module.named_modules():
            rows.append(
                (c, name, type(sub).__qualname__, sub.training,
                 getattr(sub, "gradient_checkpointing", None),
                 type(getattr(sub, "processor", None)).__qualname__,
                 "forward" in sub.__dict__, getattr(sub, "_compiled_call_impl", None) is not None,
                 len(sub._forward_hooks), len(sub._forward_pre_hooks), len(sub._backward_hooks))
            )  # fmt: skip
        for name, t in module.state_dict(keep_vars=True).items():
            rows.append(
                (c, name, tuple(t.shape), t.stride(), str(t.dtype), str(t.device), bool(t.requires_grad))
            )
    rows.append(("tokenizers", tuple(len(t) for t in base.tokenizers)))
    rows.append(("scheduler", json.dumps(dict(base.noise_scheduler.config), sort_keys=True, default=str)))
    return tuple(rows)


@dataclass
class BaseState:
    """A base as loaded: its structure and checksums, its tokenizers and scheduler config."""

    structure: tuple
    checksums: torch.Tensor
    tokenizers: tuple
    scheduler_config: dict

    @classmethod
    def of(cls, base: BaseModel) -> BaseState:
        return cls(
            structure(base),
            tensor_checksums(base),
            tuple(copy.deepcopy(t) for t in base.tokenizers),
            dict(base.noise_scheduler.config),
        )

    def difference(self, base: BaseModel) -> str | None:
        """Why ``base`` is not as it was loaded, or None when it is."""
        now = structure(base)
        if now != self.structure:
            was = set(self.structure)
            row = next((r for r in now if r not in was), None) or next(
                r for r in self.structure if r not in set(now)
            )
            return f"structure changed at {row[:2]!r}: {row[2:]!r}"[:300]
        sums = tensor_checksums(base)
        if not torch.equal(sums, self.checksums):
            bad = int((sums != self.checksums).any(dim=1).nonzero()[0])
            return f"weights changed: tensor {bad} of {len(sums)} differs from the loaded base"
        return None


# ----- taking a trial's changes off a base -----------------------------------------------------
def strip_adapters(module: torch.nn.Module) -> None:
    """Every peft layer replaced by the layer it wraps, and peft's bookkeeping removed: the
    module's classes and attributes are the loaded ones again (LoRA, DoRA, LoHa, LoKr alike)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, sub in list(module.named_modules()):
        if name and isinstance(sub, BaseTunerLayer):
            parent_name, _, child = name.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            setattr(parent, child, sub.get_base_layer())
    module.__dict__.pop("peft_config", None)
    module.__dict__.pop("_hf_peft_config_loaded", None)


def restore(base: BaseModel, state: BaseState) -> None:
    """Undo what a trial does to a base (see the module's docstring); weights are not touched."""
    from diffusers import DDPMScheduler

    from sdexp.models.token_embeddings import TokenEmbeddings

    for encoder in base.text_encoders:
        table = encoder.get_input_embeddings()
        while isinstance(table, TokenEmbeddings):
            table = table.original
        encoder.set_input_embeddings(table)
        if getattr(encoder, "is_gradient_checkpointing", False):
            encoder.gradient_checkpointing_disable()
        if hasattr(encoder, "disable_input_require_grads"):  # the hook checkpointing left behind
            encoder.disable_input_require_grads()
        encoder.__dict__.pop("_require_grads_hook", None)
        encoder.__dict__.pop("_require_grads_hooks", None)
    if getattr(base.unet, "is_gradient_checkpointing", False):
        base.unet.disable_gradient_checkpointing()
    for module in base.modules:
        strip_adapters(module)
        for sub in module.modules():
            sub.__dict__.pop("forward", None)  # accelerate's autocast wrapper
            sub.__dict__.pop("_original_forward", None)
            sub.__dict__.pop("_is_accelerate_prepared", None)
            if getattr(sub, "_compiled_call_impl", None) is not None:
                sub._compiled_call_impl = None
        if any(p.dim() == 4 and not p.is_contiguous() for p in module.parameters()):
            module.to(memory_format=torch.contiguous_format)  # a trial's train.channels_last
        module.requires_grad_(False)
        module.eval()
    if tuple(len(t) for t in base.tokenizers) != tuple(len(t) for t in state.tokenizers):
        base.tokenizers = tuple(copy.deepcopy(t) for t in state.tokenizers)
    base.noise_scheduler = DDPMScheduler.from_config(state.scheduler_config)


# ----- the pool --------------------------------------------------------------------------------
@dataclass
class _Entry:
    key: str
    base: BaseModel
    state: BaseState
    lent: bool = False


@dataclass
class BasePool:
    """At most one base (a worker's trials share one), lent to one trial at a time."""

    enabled: bool = False
    entry: _Entry | None = None
    last: dict = field(default_factory=dict)  # the last borrow and release: reused?, seconds, why dropped

    def borrow(self, cfg, weight_dtype: torch.dtype, device: torch.device, *, keeps_base: bool) -> BaseModel:
        """The run's base on ``device``: the pooled one when the pool is on and its key matches,
        else freshly loaded (and pooled). ``keeps_base=False`` (the method trains the base's own
        weights): the base is the trial's for good, never pooled again."""
        started = time.perf_counter()
        if not self.enabled:
            self.clear()
            base = _on_device(load_run_base(cfg, weight_dtype), device)
            self.last = {"reused": False, "load_seconds": time.perf_counter() - started}
            return base
        key = base_key(cfg, weight_dtype, device)
        if self.entry is not None and self.entry.lent:
            self.release()  # the previous trial ended without giving it back (it failed)
        if self.entry is not None and self.entry.key != key:
            self.clear()
        reused = self.entry is not None
        if self.entry is None:
            base = _on_device(load_run_base(cfg, weight_dtype), device)
            self.entry = _Entry(key, base, BaseState.of(base))
        base = self.entry.base
        if keeps_base:
            self.entry.lent = True
        else:
            self.entry = None
        self.last = {"reused": reused, "load_seconds": time.perf_counter() - started}
        return base

    def release(self) -> str | None:
        """Take the lent base back: restore it, check it; returns why it was dropped, or None."""
        entry = self.entry
        if entry is None or not entry.lent:
            return None
        started = time.perf_counter()
        try:
            restore(entry.base, entry.state)
            why = entry.state.difference(entry.base)
        except Exception as err:  # a base that cannot be restored is reloaded, never reused
            why = f"restoring failed: {type(err).__name__}: {err}"
        entry.lent = False
        if why is not None:
            self.clear()
        self.last = {**self.last, "release_seconds": time.perf_counter() - started, "dropped": why}
        return why

    def clear(self) -> None:
        """Forget the pooled base (its memory is freed once the trial using it lets go)."""
        if self.entry is not None:
            self.entry = None
            _free_accelerator_memory()


def _on_device(base: BaseModel, device: torch.device) -> BaseModel:
    for module in base.modules:
        module.to(device)
    return base


def _free_accelerator_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


POOL = BasePool()


@contextmanager
def reusing_bases(enabled: bool = True) -> Iterator[BasePool]:
    """Trials run inside share one base (when ``enabled``); it is freed on the way out."""
    previous = POOL.enabled
    POOL.enabled = enabled
    try:
        yield POOL
    finally:
        POOL.enabled = previous
        POOL.release()
        POOL.clear()
