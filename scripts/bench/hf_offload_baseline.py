#!/usr/bin/env python3
"""Hugging Face transformers + accelerate offloading baseline for the MoE decode benchmark.

Builds a Mixtral-shaped ``MixtralForCausalLM`` with deterministic synthetic bf16 weights (nothing is
downloaded), places it with accelerate exactly like ``from_pretrained(device_map="auto",
max_memory={0: GPU_BUDGET, "cpu": HOST})`` would (whole decoder layers on the GPU until the budget is
used, the rest in host RAM, copied to the GPU by accelerate's hooks at every forward), optionally forces
the router to follow a real routing trace, and times greedy single-token decode steps with the KV cache.

That is the baseline our runtime has to beat. See scripts/bench/README.md for the GPU command lines.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch
from torch import nn

GIB = 1 << 30
DTYPE = torch.bfloat16
DECODER_LAYER_CLASS = "MixtralDecoderLayer"

_QUIET = False


def log(*args) -> None:
    """Progress goes to stderr under --json so that stdout carries only the JSON line."""
    print(*args, file=sys.stderr if _QUIET else sys.stdout, flush=True)


def die(msg: str) -> NoReturn:
    """Clear, single-line user errors instead of tracebacks for bad flags or inputs."""
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def fmt_bytes(n: float) -> str:
    """Readable sizes for both the 90 GiB model and the tiny CPU test shapes."""
    for unit, scale in (("GiB", GIB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Example (H100, full Mixtral-8x7B shape, 24 GiB of weights on the GPU): "
        "python scripts/bench/hf_offload_baseline.py --layers 32 --gpu-budget-gb 24 "
        "--force-routing /work/shared/data/routing-traces/mixtral-8x7b-humaneval-gsm8k",
    )
    g = p.add_argument_group("model shape (Mixtral-8x7B defaults)")
    g.add_argument("--layers", type=int, default=32, help="decoder layers")
    g.add_argument("--hidden", type=int, default=4096, help="hidden size")
    g.add_argument("--intermediate", type=int, default=14336, help="expert FFN size")
    g.add_argument("--experts", type=int, default=8, help="routed experts per layer")
    g.add_argument("--top-k", type=int, default=2, help="experts per token")
    g.add_argument("--heads", type=int, default=32, help="attention heads")
    g.add_argument("--kv-heads", type=int, default=8, help="key/value heads")
    g.add_argument("--vocab", type=int, default=32000, help="vocabulary size")
    g = p.add_argument_group("placement")
    g.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                   help="execution device; 'cpu' is for testing: 'GPU' layers then stay on the CPU but the "
                        "offloaded layers still go through accelerate's offload hooks")
    g.add_argument("--gpu-budget-gb", type=float, default=24.0,
                   help="GiB (2^30 bytes) of weights allowed on the GPU: max_memory[0]. accelerate also keeps "
                        "room in it for one offloaded decoder layer")
    g.add_argument("--host-budget-gb", type=float, default=None,
                   help="GiB of host RAM for offloaded weights: max_memory['cpu'] (default: 90%% of available RAM)")
    g.add_argument("--head-on-gpu", action="store_true",
                   help="after device_map='auto' placement, move model.norm / lm_head / rotary_emb to the GPU "
                        "if accelerate put them on the CPU (not what device_map='auto' does, but closer to how "
                        "our runtime places dense weights)")
    g = p.add_argument_group("routing")
    g.add_argument("--force-routing", metavar="DIR", type=Path, default=None,
                   help="dense routing-trace folder (meta.json, experts_u8.bin, sequences.tsv); decode step s "
                        "uses trace token (s mod T) at layer (l mod trace layers). Default: the synthetic "
                        "router decides")
    g.add_argument("--no-verify-routing", action="store_true",
                   help="do not record the experts actually used during warmup steps")
    g.add_argument("--verify-all-steps", action="store_true",
                   help="also record (and check) experts during timed steps (adds a tiny copy per layer)")
    g = p.add_argument_group("benchmark")
    g.add_argument("--prompt-tokens", type=int, default=16, help="random prompt length (prefill, untimed)")
    g.add_argument("--decode-tokens", type=int, default=32, help="timed greedy decode steps")
    g.add_argument("--warmup", type=int, default=2, help="untimed decode steps before the timed ones")
    g.add_argument("--seed", type=int, default=0, help="seed for weights and prompt")
    g.add_argument("--attn-impl", default="sdpa", help="transformers attention implementation")
    g.add_argument("--experts-impl", default=None,
                   help="transformers experts implementation (eager, grouped_mm, batched_mm, ...); "
                        "default: the installed transformers' choice")
    g.add_argument("--plan-only", action="store_true",
                   help="print the device map for these flags and exit (no weights are allocated)")
    g.add_argument("--json", action="store_true", help="print only the final JSON line on stdout")
    args = p.parse_args(argv)
    for name in ("layers", "hidden", "intermediate", "experts", "top_k", "heads", "kv_heads", "vocab",
                 "prompt_tokens", "decode_tokens"):
        if getattr(args, name) <= 0:
            die(f"--{name.replace('_', '-')} must be positive")
    if args.warmup < 0:
        die("--warmup must be >= 0")
    if args.top_k > args.experts:
        die(f"--top-k {args.top_k} > --experts {args.experts}")
    if args.hidden % args.heads or args.heads % args.kv_heads:
        die("--hidden must be divisible by --heads, and --heads by --kv-heads")
    if args.gpu_budget_gb <= 0:
        die("--gpu-budget-gb must be positive")
    return args


# --------------------------------------------------------------------------------------------- trace


@dataclass
class RoutingTrace:
    """Top-k expert ids per (token, layer), rank 0 = top-1, as recorded from a real model."""

    path: Path
    experts: np.ndarray  # uint8 [T, L, K]
    num_experts: int
    num_sequences: int

    @property
    def tokens(self) -> int:
        return self.experts.shape[0]

    @property
    def layers(self) -> int:
        return self.experts.shape[1]

    @property
    def top_k(self) -> int:
        return self.experts.shape[2]


def load_trace(folder: Path) -> RoutingTrace:
    """Read a dense trace folder and validate it, so a bad trace fails before a 90 GB model is built."""
    if not folder.is_dir():
        die(f"--force-routing: trace folder {folder} does not exist")
    meta_path, bin_path = folder / "meta.json", folder / "experts_u8.bin"
    for f in (meta_path, bin_path):
        if not f.is_file():
            die(f"--force-routing: {f} is missing (need meta.json and experts_u8.bin)")
    meta = json.loads(meta_path.read_text())
    shape = meta.get("shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(x, int) and x > 0 for x in shape)):
        die(f"{meta_path}: 'shape' must be [tokens, layers, k], got {shape!r}")
    raw = np.fromfile(bin_path, dtype=np.uint8)
    if raw.size != math.prod(shape):
        die(f"{bin_path}: {raw.size} bytes, but meta.json shape {shape} needs {math.prod(shape)}")
    experts = raw.reshape(shape)
    num_experts = int(meta.get("num_routed_experts", int(experts.max()) + 1))
    if int(experts.max()) >= num_experts:
        die(f"{bin_path}: expert id {int(experts.max())} >= num_routed_experts {num_experts}")
    num_seq = read_sequences(folder / "sequences.tsv", shape[0])
    return RoutingTrace(folder, experts, num_experts, num_seq)


def read_sequences(tsv: Path, tokens: int) -> int:
    """Check that sequences.tsv (optional) tiles the trace; returns the number of sequences (0 if absent)."""
    if not tsv.is_file():
        return 0
    lines = [ln.split("\t") for ln in tsv.read_text().splitlines() if ln.strip()]
    header = lines[0]
    if "token_offset" not in header or "n_tokens" not in header:
        die(f"{tsv}: header needs token_offset and n_tokens columns, got {header}")
    io, ino = header.index("token_offset"), header.index("n_tokens")
    for row in lines[1:]:
        off, n = int(row[io]), int(row[ino])
        if off < 0 or n < 0 or off + n > tokens:
            die(f"{tsv}: sequence at offset {off} with {n} tokens exceeds the {tokens} trace tokens")
    return len(lines) - 1


def check_trace_matches_model(trace: RoutingTrace, args) -> None:
    """The forced experts must exist in the synthetic model and k must match, or the routing is meaningless."""
    if trace.top_k != args.top_k:
        die(f"trace k = {trace.top_k} but --top-k {args.top_k}; pass --top-k {trace.top_k}")
    if trace.num_experts > args.experts or int(trace.experts.max()) >= args.experts:
        die(f"trace uses expert ids up to {int(trace.experts.max())} ({trace.num_experts} routed experts) "
            f"but --experts {args.experts}; pass --experts {trace.num_experts}")
    if trace.layers != args.layers:
        log(f"note: trace has {trace.layers} layers, model {args.layers}: layer l uses trace layer l mod "
            f"{trace.layers}")


# --------------------------------------------------------------------------------------------- model


def make_config(args):
    """Mixtral-8x7B-like config with the requested shape; bf16, no sliding window."""
    from transformers import MixtralConfig

    cfg = MixtralConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        num_local_experts=args.experts, num_experts_per_tok=args.top_k, max_position_embeddings=32768,
        tie_word_embeddings=False, use_cache=True,
    )
    cfg._attn_implementation = args.attn_impl
    if args.experts_impl is not None:
        if not hasattr(cfg, "_experts_implementation"):
            die("--experts-impl: this transformers version has no experts implementation switch")
        cfg._experts_implementation = args.experts_impl
    return cfg


def build_empty_model(cfg):
    """Parameters on the meta device (no memory, instant); buffers (RoPE inv_freq) stay real on the CPU."""
    from accelerate import init_empty_weights
    from transformers import MixtralForCausalLM

    with init_empty_weights(include_buffers=False):
        model = MixtralForCausalLM(cfg)
    return model.eval()


@dataclass
class Placement:
    """accelerate's device map plus the sizes we report."""

    device_map: dict
    gpu_layers: list = field(default_factory=list)
    cpu_layers: list = field(default_factory=list)
    gpu_bytes: int = 0
    cpu_bytes: int = 0
    layer_bytes: int = 0
    expert_bytes: int = 0  # all routed-expert weights of all layers
    other_on_cpu: list = field(default_factory=list)


def plan_placement(model, args) -> Placement:
    """Same planning as from_pretrained(device_map='auto', max_memory=...): greedy, whole decoder layers."""
    import psutil
    from accelerate import infer_auto_device_map
    from accelerate.utils import compute_module_sizes

    host = args.host_budget_gb * GIB if args.host_budget_gb else 0.9 * psutil.virtual_memory().available
    max_memory = {0: int(args.gpu_budget_gb * GIB), "cpu": int(host)}
    device_map = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=[DECODER_LAYER_CLASS],
                                       dtype=DTYPE)
    sizes = compute_module_sizes(model, dtype=DTYPE)
    layer_bytes = sizes["model.layers.0"]
    embed_bytes = sizes["model.embed_tokens"]
    total = sizes[""]
    if "disk" in device_map.values():
        die(f"host budget too small: the model needs {fmt_bytes(total)} in GPU+host memory, max_memory is "
            f"{fmt_bytes(max_memory[0])} GPU + {fmt_bytes(host)} host (--host-budget-gb); accelerate would spill "
            "to disk, which this benchmark does not do")
    if 0 not in device_map.values():
        die(f"--gpu-budget-gb {args.gpu_budget_gb} is too small: nothing fits on the GPU. accelerate reserves one "
            f"decoder layer ({fmt_bytes(layer_bytes)}) for on-the-fly copies and the embedding needs "
            f"{fmt_bytes(embed_bytes)}, so the budget must be at least {fmt_bytes(layer_bytes + embed_bytes)} "
            f"(= {(layer_bytes + embed_bytes) / GIB:.4f} GiB)")
    if args.head_on_gpu:
        for name in ("model.norm", "model.rotary_emb", "lm_head"):
            if device_map.get(name) == "cpu":
                device_map[name] = 0
    pl = Placement(device_map=device_map, layer_bytes=layer_bytes)
    units = ["model.embed_tokens", *(f"model.layers.{i}" for i in range(args.layers)),
             "model.norm", "model.rotary_emb", "lm_head"]
    for key in device_map:  # a map finer than a decoder layer would mean accelerate split one
        if key.count(".") > (2 if key.startswith("model.layers.") else 1):
            die(f"unexpected device map entry {key!r}: accelerate split a module ({dict(device_map)})")
    for name in units:  # entries may be coarser than units ('' when everything fits on the GPU)
        dev, b = device_of(name, device_map), sizes.get(name, 0)
        on_gpu = dev == 0
        if on_gpu:
            pl.gpu_bytes += b
        else:
            pl.cpu_bytes += b
        if name.startswith("model.layers."):
            (pl.gpu_layers if on_gpu else pl.cpu_layers).append(int(name.split(".")[2]))
        elif not on_gpu and b > 0:
            pl.other_on_cpu.append(name)
    pl.expert_bytes = sum(sizes[n] for n in sizes if n.endswith(".mlp.experts"))
    return pl


def fill_block(seed: int, device) -> torch.Tensor:
    """A small seeded random block (std 0.02); big tensors are tiled from it, ~3x faster than uniform_."""
    n = (1 << 20) + 7  # not a power of two, so rows of different tensors/experts see different phases
    g = torch.Generator().manual_seed(seed)
    a = 0.02 * math.sqrt(3.0)
    return torch.empty(n, dtype=torch.float32).uniform_(-a, a, generator=g).to(DTYPE).to(device)


def fill_tiled(t: torch.Tensor, block: torch.Tensor, phase: int) -> None:
    """Fill t with the block rotated by phase, repeated: one broadcast copy, memory-bandwidth bound."""
    blk = torch.roll(block, shifts=phase)
    flat, b = t.view(-1), blk.numel()
    full = flat.numel() // b
    if full:
        flat[: full * b].view(full, b).copy_(blk.expand(full, b))
    rest = flat.numel() - full * b
    if rest:
        flat[full * b:].copy_(blk[:rest])


def device_of(name: str, device_map: dict):
    """The device_map entry that owns a parameter (longest matching module prefix)."""
    best = None
    for key in device_map:
        if key == "" or name == key or name.startswith(key + "."):
            if best is None or len(key) > len(best):
                best = key
    return device_map[best]


def materialize(model, device_map: dict, exec_device: torch.device, seed: int) -> tuple[float, int]:
    """Replace every meta parameter by a real bf16 tensor where accelerate expects it (GPU for device 0,
    host RAM for 'cpu'); norms get 1.0. Returns (seconds, bytes)."""
    t0, nbytes = time.perf_counter(), 0
    blocks = {}
    for name, param in list(model.named_parameters()):
        dev = exec_device if device_of(name, device_map) == 0 else torch.device("cpu")
        if dev not in blocks:
            blocks[dev] = fill_block(seed, dev)
        t = torch.empty(param.shape, dtype=DTYPE, device=dev)
        if name.endswith("norm.weight"):
            t.fill_(1.0)
        else:
            fill_tiled(t, blocks[dev], zlib.crc32(name.encode()) % blocks[dev].numel())
        mod_name, _, leaf = name.rpartition(".")
        model.get_submodule(mod_name)._parameters[leaf] = nn.Parameter(t, requires_grad=False)
        nbytes += t.numel() * t.element_size()
    if exec_device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, nbytes


def dispatch(model, placement: Placement, exec_device: torch.device) -> None:
    """accelerate.dispatch_model: 'cpu' entries become offloaded (weights_map in host RAM, params on meta,
    AlignDevicesHook copies them to exec_device at each forward), as in from_pretrained(device_map=...)."""
    from accelerate import dispatch_model

    if exec_device.type == "cpu":
        # accelerate only offloads 'cpu' entries when the main device is not the string "cpu"; a torch.device
        # compares unequal to that string, which keeps the real offload code path for the CPU test.
        dmap = {k: (exec_device if v == 0 else v) for k, v in placement.device_map.items()}
        force = True
    else:
        dmap, force = placement.device_map, False
    dispatch_model(model, device_map=dmap, main_device=exec_device,
                   skip_keys=getattr(model, "_skip_keys_device_placement", None), force_hooks=force)
    model.hf_device_map = placement.device_map


# --------------------------------------------------------------------------------------------- routing


def find_moe_blocks(model) -> list:
    """(layer index, router module, experts module) for every decoder layer, or a clear error if the installed
    transformers uses a Mixtral layout this script does not know."""
    out = []
    for i, layer in enumerate(model.model.layers):
        mlp = getattr(layer, "mlp", None)
        gate, experts = getattr(mlp, "gate", None), getattr(mlp, "experts", None)
        if gate is None or experts is None or isinstance(gate, nn.Linear) or isinstance(experts, nn.ModuleList) \
                or not hasattr(gate, "top_k"):
            die("unknown Mixtral MoE structure in this transformers version: expected layer.mlp.gate to be a "
                "top-k router module returning (logits, scores, indices) and layer.mlp.experts a fused experts "
                f"module (transformers 5.x); found gate={type(gate).__name__}, experts={type(experts).__name__}")
        out.append((i, gate, experts))
    return out


class ForcedRouting:
    """Makes every router return the trace's experts for the current decode step.

    The original router still runs (same compute as the real model); its indices are replaced by the trace's,
    the scores are its own softmax renormalized over the forced experts, and the returned logits are raised
    on the forced experts so that anything recomputing top-k from them agrees."""

    def __init__(self, trace: RoutingTrace, device: torch.device):
        self.trace = trace
        self.table = torch.from_numpy(trace.experts.astype(np.int64)).to(device)  # [T, L, K], no per-step H2D
        self.step = 0
        self.enabled = False

    def indices(self, layer: int) -> torch.Tensor:
        return self.table[self.step % self.trace.tokens, layer % self.trace.layers].view(1, -1)

    def install(self, blocks) -> None:
        """Patch router.forward per instance; must run before dispatch so accelerate's hooks wrap the patch."""
        for layer, gate, _ in blocks:
            gate.forward = self._wrap(gate.forward, layer)

    def _wrap(self, orig, layer: int):
        def forward(hidden_states):
            out = orig(hidden_states)
            if not self.enabled:
                return out
            if not (isinstance(out, tuple) and len(out) == 3):
                raise RuntimeError(f"router of layer {layer} returned {type(out).__name__}"
                                   f"{'' if not isinstance(out, tuple) else f' of {len(out)}'}; expected "
                                   "(router_logits, router_scores, router_indices) as in transformers 5.x")
            logits, scores, idx = out
            if idx.shape[0] != 1:
                raise RuntimeError(f"forced routing expects one token per decode step, got {idx.shape[0]}")
            forced = self.indices(layer).to(idx.device)
            probs = torch.softmax(logits.float(), dim=-1).gather(-1, forced)
            new_scores = (probs / probs.sum(-1, keepdim=True)).to(scores.dtype)
            rank = torch.arange(forced.shape[-1], 0, -1, device=logits.device, dtype=logits.dtype)  # K..1
            big = logits.abs().amax(-1, keepdim=True) * 4 + 1e3
            new_logits = logits.scatter(-1, forced, big + rank)  # trace order: rank 0 gets the largest logit
            return new_logits, new_scores, forced.to(idx.dtype)

        return forward


class ExpertRecorder:
    """Forward pre-hooks on the experts modules: record the top_k_index they actually receive, per step."""

    def __init__(self, blocks):
        self.blocks = blocks
        self.handles = []
        self.records = {}  # (step, layer) -> tensor
        self.step = None  # None during prefill: nothing is recorded

    def start(self) -> None:
        for layer, _, experts in self.blocks:
            self.handles.append(experts.register_forward_pre_hook(self._hook(layer), with_kwargs=True))

    def stop(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def _hook(self, layer: int):
        def hook(module, args, kwargs):
            if self.step is None:
                return
            idx = kwargs["top_k_index"] if "top_k_index" in kwargs else args[1]
            self.records[(self.step, layer)] = idx.detach().clone()

        return hook

    def check(self, forced: ForcedRouting, layers: int) -> int:
        """Compare what the experts got with the trace; returns the number of verified steps or exits."""
        steps = sorted({s for s, _ in self.records})
        for s in steps:
            for layer in range(layers):
                got = self.records.get((s, layer))
                want = forced.trace.experts[s % forced.trace.tokens, layer % forced.trace.layers].tolist()
                if got is None or got.cpu().view(-1).tolist() != want:
                    die(f"forced routing NOT applied: step {s} layer {layer}: experts got "
                        f"{None if got is None else got.cpu().view(-1).tolist()}, trace says {want}")
        return len(steps)


# --------------------------------------------------------------------------------------------- benchmark


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def run_decode(model, args, exec_device, forced: ForcedRouting | None, recorder: ExpertRecorder | None):
    """Prefill once (model's own routing, untimed), then step-by-step greedy decode with the KV cache.
    Returns the timed per-step seconds; decode step s (warmup included) uses trace token s mod T."""
    gen = torch.Generator().manual_seed(args.seed + 1)
    prompt = torch.randint(0, args.vocab, (1, args.prompt_tokens), generator=gen).to(exec_device)
    out = model(input_ids=prompt, use_cache=True, logits_to_keep=1)
    cache, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
    if forced:
        forced.enabled = True
    times = []
    for s in range(args.warmup + args.decode_tokens):
        timed = s >= args.warmup
        if forced:
            forced.step = s
        if recorder:
            recorder.step = s
            if timed and not args.verify_all_steps and recorder.handles:
                recorder.stop()
        sync(exec_device)
        t0 = time.perf_counter()
        out = model(input_ids=tok, past_key_values=cache, use_cache=True)
        cache, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
        sync(exec_device)
        dt = time.perf_counter() - t0
        if timed:
            times.append(dt)
        log(f"  step {s:3d}{'' if timed else ' (warmup)'}: {dt * 1e3:9.2f} ms  token {int(tok)}")
    if recorder:
        recorder.stop()
    return times


def versions() -> dict:
    import accelerate
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__}


def main(argv=None) -> None:
    global _QUIET
    args = parse_args(argv)
    _QUIET = args.json
    if args.device == "cuda" and not torch.cuda.is_available() and not args.plan_only:
        die("--device cuda but torch.cuda.is_available() is False (use --device cpu for a functional test)")
    exec_device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    if exec_device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(0)
        if args.gpu_budget_gb * GIB > free:
            die(f"--gpu-budget-gb {args.gpu_budget_gb} exceeds free GPU memory {free / GIB:.2f} GiB")
    torch.manual_seed(args.seed)

    trace = load_trace(args.force_routing) if args.force_routing else None
    if trace:
        log(f"trace {trace.path.name}: {trace.tokens} tokens x {trace.layers} layers x top-{trace.top_k}, "
            f"{trace.num_experts} experts, {trace.num_sequences} sequences")
        check_trace_matches_model(trace, args)

    t_build = time.perf_counter()
    cfg = make_config(args)
    model = build_empty_model(cfg)
    placement = plan_placement(model, args)
    log_placement(placement)
    if args.plan_only:
        return
    blocks = find_moe_blocks(model)
    forced = ForcedRouting(trace, exec_device) if trace else None
    if forced:
        forced.install(blocks)
    fill_s, nbytes = materialize(model, placement.device_map, exec_device, args.seed)
    dispatch(model, placement, exec_device)
    build_s = time.perf_counter() - t_build
    log(f"materialized {fmt_bytes(nbytes)} of bf16 weights in {fill_s:.1f} s "
        f"({nbytes / GIB / max(fill_s, 1e-9):.2f} GiB/s); build total {build_s:.1f} s")
    log(f"attention={cfg._attn_implementation} experts={getattr(cfg, '_experts_implementation', None)}")

    recorder = None
    if forced and not args.no_verify_routing and (args.warmup > 0 or args.verify_all_steps):
        recorder = ExpertRecorder(blocks)
        recorder.start()
    times = run_decode(model, args, exec_device, forced, recorder)
    verified = recorder.check(forced, args.layers) if recorder else 0
    if forced:
        log(f"forced routing verified on {verified} decode steps x {args.layers} layers"
            if verified else "forced routing NOT verified (no warmup steps, or --no-verify-routing)")

    med, mean = statistics.median(times), statistics.fmean(times)
    tps = len(times) / sum(times)
    log(f"decode: median {med * 1e3:.2f} ms/step, mean {mean * 1e3:.2f} ms/step, {tps:.3f} tokens/s "
        f"({len(times)} timed steps)")
    result = {
        "layers": args.layers, "hidden": args.hidden, "intermediate": args.intermediate, "experts": args.experts,
        "top_k": args.top_k, "heads": args.heads, "kv_heads": args.kv_heads, "vocab": args.vocab,
        "gpu_budget_gb": args.gpu_budget_gb, "layers_on_gpu": len(placement.gpu_layers),
        "layers_on_cpu": len(placement.cpu_layers), "gpu_weight_bytes": placement.gpu_bytes,
        "cpu_weight_bytes": placement.cpu_bytes, "layer_bytes": placement.layer_bytes,
        "expert_bytes": placement.expert_bytes, "other_modules_on_cpu": placement.other_on_cpu,
        "head_on_gpu": args.head_on_gpu, "prompt_tokens": args.prompt_tokens, "warmup": args.warmup,
        "decode_tokens": len(times), "median_step_s": med, "mean_step_s": mean, "min_step_s": min(times),
        "tokens_per_s": tps, "build_seconds": build_s, "fill_seconds": fill_s,
        "routing": f"trace:{trace.path.name}" if trace else "synthetic-router",
        "routing_verified_steps": verified, "attn_impl": cfg._attn_implementation,
        "experts_impl": getattr(cfg, "_experts_implementation", None), "device": args.device,
        "device_name": torch.cuda.get_device_name(0) if exec_device.type == "cuda" else "cpu",
        **versions(),
    }
    print(json.dumps(result), flush=True)


def log_placement(pl: Placement) -> None:
    """The device-map summary: how much of the model accelerate keeps on the GPU and how much it streams."""
    log(f"device map: {len(pl.gpu_layers)} decoder layers on GPU ({compact(pl.gpu_layers)}), "
        f"{len(pl.cpu_layers)} on CPU, offloaded ({compact(pl.cpu_layers)}); one decoder layer = "
        f"{fmt_bytes(pl.layer_bytes)}; weights on GPU {fmt_bytes(pl.gpu_bytes)} (incl. dense), in host RAM "
        f"{fmt_bytes(pl.cpu_bytes)}; non-layer modules on CPU: {pl.other_on_cpu or 'none'}")


def compact(ids: list) -> str:
    """[0,1,2,5] -> '0-2,5' for readable device-map summaries."""
    if not ids:
        return "none"
    ids, parts, start = sorted(ids), [], None
    for i, x in enumerate(ids):
        if start is None:
            start = x
        if i + 1 == len(ids) or ids[i + 1] != x + 1:
            parts.append(f"{start}" if start == x else f"{start}-{x}")
            start = None
    return ",".join(parts)


if __name__ == "__main__":
    main()
