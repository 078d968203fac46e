#!/usr/bin/env python3
"""Build tiny random MoE checkpoints with Hugging Face transformers and record golden outputs.

The C++ runtime must reproduce Hugging Face transformers.  This script writes, under
tests/data/golden/ (relative to the repository root):

  mixtral-tiny-f32/   MixtralForCausalLM, fp32, single model.safetensors, no sliding window,
                      untied lm_head, plus a SentencePiece tokenizer.model
  mixtral-tiny-bf16/  same shape, sliding_window=8, tied embeddings, bf16 weights in 3+ shards
                      (model.safetensors.index.json); golden outputs are computed with fp32
                      compute on the bf16 weights (loaded with dtype=torch.float32)
  qwen2moe-tiny-f32/  Qwen2MoeForCausalLM, fp32, single file (q/k/v biases, shared expert with
                      sigmoid gate, norm_topk_prob=False)
  <model>/golden.safetensors   prompts, prefill logits, greedy KV-cache decode ids/logits and
                               the top-k routed experts per token and layer
  tokenizer_cases.json         SentencePiece encode/decode cases for the tokenizer.model

Run it (from the repository root; about 10 s on two CPU cores):

    python3 -m venv /work/venv-golden
    /work/venv-golden/bin/pip install -r scripts/golden/requirements.txt
    /work/venv-golden/bin/python scripts/golden/make_golden.py

Requirements (pinned in scripts/golden/requirements.txt): torch, transformers, safetensors,
sentencepiece (numpy comes with them).  A CPU-only torch is enough.  The tokenizer is trained on
the licence texts in /usr/share/common-licenses (Debian package base-files).

`--verify-only` skips generation and re-checks the files already on disk: fresh reload with
transformers, comparison with the stored golden tensors, and an independent plain-PyTorch
re-implementation of both architectures read straight from the safetensors files.

Everything is seeded, the torch thread count is pinned to 1, so re-running with the pinned
versions on the same kind of machine writes byte-identical files.
"""

import argparse
import hashlib
import json
import math
import os
import shutil
import struct
import sys
import tempfile

import numpy as np
import sentencepiece as spm
import safetensors
import torch
import torch.nn.functional as F
import transformers
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import (
    MixtralConfig,
    MixtralForCausalLM,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
)

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(REPO, "tests", "data", "golden")

PROMPT_LENGTHS = (5, 11, 17)
PROMPT_SEED = 2024
DECODE_STEPS = 6
VOCAB = 1000

# Tokenizer corpus: licence texts shipped by Debian's base-files package.
TOKENIZER_CORPUS = [
    "/usr/share/common-licenses/GPL-3",
    "/usr/share/common-licenses/GPL-2",
    "/usr/share/common-licenses/LGPL-2.1",
    "/usr/share/common-licenses/LGPL-3",
    "/usr/share/common-licenses/GFDL-1.3",
    "/usr/share/common-licenses/Apache-2.0",
    "/usr/share/common-licenses/MPL-2.0",
    "/usr/share/common-licenses/Artistic",
    "/usr/share/common-licenses/BSD",
    "/usr/share/common-licenses/CC0-1.0",
]

TOKENIZER_TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "This program is free software: you can redistribute it and/or modify it.",
    "   leading spaces",
    "trailing spaces   ",
    "multiple   spaces  between    words",
    "In 2024, 12345 people paid $3.50 each (version 1.0.2).",
    "Punctuation: a, b; c! d? \"quoted\" 'single' -- [x] {y} <z> #@%^&*_+=|\\/~`",
    "first line\nsecond line\n",
    "Café, naïve résumé, déjà vu",
    "日本語のテキスト",
    "emoji 🙂👍 done",
    "",
]


def common_mixtral_kwargs():
    return dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=8,
        num_experts_per_tok=2,
        max_position_embeddings=256,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        initializer_range=0.1,
    )


MODELS = [
    dict(
        name="mixtral-tiny-f32",
        cls=MixtralForCausalLM,
        config=lambda: MixtralConfig(
            **common_mixtral_kwargs(), sliding_window=None, tie_word_embeddings=False
        ),
        seed=1234,
        save_dtype=torch.float32,
        max_shard_size=None,
        tokenizer=True,
    ),
    dict(
        name="mixtral-tiny-bf16",
        cls=MixtralForCausalLM,
        config=lambda: MixtralConfig(
            **common_mixtral_kwargs(), sliding_window=8, tie_word_embeddings=True
        ),
        seed=5678,
        save_dtype=torch.bfloat16,
        max_shard_size="600KB",
        tokenizer=True,
    ),
    dict(
        name="qwen2moe-tiny-f32",
        cls=Qwen2MoeForCausalLM,
        config=lambda: Qwen2MoeConfig(
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=128,
            moe_intermediate_size=64,
            shared_expert_intermediate_size=96,
            num_experts=8,
            num_experts_per_tok=2,
            norm_topk_prob=False,
            decoder_sparse_step=1,
            mlp_only_layers=[],
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            use_sliding_window=False,
            rope_theta=10000.0,
            tie_word_embeddings=False,
            initializer_range=0.1,
        ),
        seed=4321,
        save_dtype=torch.float32,
        max_shard_size=None,
        tokenizer=False,
    ),
]


def log(*a):
    print(*a, flush=True)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


def train_tokenizer():
    lines = []
    for path in TOKENIZER_CORPUS:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.rstrip("\n")
                if line.strip():
                    lines.append(line)
        log(f"  corpus {path} sha256={sha256(path)}")
    log(f"  {len(lines)} non-empty lines")
    buf = __import__("io").BytesIO()
    # Llama/Mixtral-like settings: BPE, byte fallback, digits split, whitespace kept verbatim.
    # sentence_iterator (not input=) keeps machine paths out of the serialized trainer_spec.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=buf,
        vocab_size=VOCAB,
        model_type="bpe",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        byte_fallback=True,
        split_digits=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        allow_whitespace_only_pieces=True,
        num_threads=1,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    return buf.getvalue()


def tokenizer_cases(model_bytes):
    sp = spm.SentencePieceProcessor(model_proto=model_bytes)
    assert sp.get_piece_size() == VOCAB
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    cases = []
    for text in TOKENIZER_TEXTS:
        ids = sp.encode(text)
        cases.append(
            dict(
                text=text,
                ids=ids,
                pieces=[sp.id_to_piece(i) for i in ids],
                decoded=sp.decode(ids),
            )
        )
    return cases


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def perturb_(model, seed):
    """Make exactly-zero parameters (biases) and RMSNorm weights random, deterministically."""
    g = torch.Generator().manual_seed(seed + 1)
    changed = []
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if name.endswith("norm.weight"):
            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            changed.append(name)
        elif bool((p == 0).all()):
            p.copy_(0.05 * torch.randn(p.shape, generator=g))
            changed.append(name)
    # nothing else may be left constant
    for name, p in model.named_parameters():
        assert p.numel() < 2 or float(p.std()) > 0, name
    return changed


def load(path, **overrides):
    cfg_cls = MixtralConfig if "mixtral" in os.path.basename(path) else Qwen2MoeConfig
    cls = MixtralForCausalLM if cfg_cls is MixtralConfig else Qwen2MoeForCausalLM
    kw = dict(dtype=torch.float32, attn_implementation="eager")
    if overrides:
        cfg = cfg_cls.from_pretrained(path, **overrides)
        kw["config"] = cfg
    m = cls.from_pretrained(path, **kw)
    m.eval()
    assert m.config._attn_implementation == "eager"
    for p in m.parameters():
        assert p.dtype == torch.float32
    return m


def prompts():
    g = torch.Generator().manual_seed(PROMPT_SEED)
    return [torch.randint(3, VOCAB, (n,), generator=g) for n in PROMPT_LENGTHS]


def top_k_of(router_logits, top_k):
    # Both MixtralTopKRouter and Qwen2MoeTopKRouter: softmax in fp32, then torch.topk (sorted
    # by descending probability; that is HF's order of the selected experts).
    probs = torch.softmax(router_logits.float(), dim=-1)
    vals, idx = torch.topk(probs, top_k, dim=-1)
    return idx, vals, probs


class GateRecorder:
    """Captures router_indices (3rd output) from every TopKRouter module."""

    def __init__(self, model):
        self.hits = []
        self.handles = []
        for name, mod in model.named_modules():
            if type(mod).__name__.endswith("TopKRouter"):
                self.handles.append(mod.register_forward_hook(self._hook))

    def _hook(self, mod, inp, out):
        self.hits.append(out[2].detach().clone())

    def pop(self):
        h, self.hits = self.hits, []
        return torch.stack(h, dim=1)  # [tokens, layers, k]

    def close(self):
        for h in self.handles:
            h.remove()


@torch.no_grad()
def run_model(model, ids):
    """Prefill + greedy KV-cache decode; returns the golden tensors for one prompt."""
    top_k = model.config.num_experts_per_tok
    rec = GateRecorder(model)

    def routed(out):
        idx, vals, probs = zip(*[top_k_of(r, top_k) for r in out.router_logits])
        idx = torch.stack(idx, dim=1)  # [tokens, layers, k]
        hooked = rec.pop()
        assert torch.equal(idx, hooked), "router ids from router_logits != hooked router ids"
        # margin between the k-th and (k+1)-th probability: how robust the routing is
        srt = torch.stack(probs, dim=1).sort(dim=-1, descending=True).values
        gap = (srt[..., top_k - 1] - srt[..., top_k]).min().item()
        return idx, gap

    out = model(input_ids=ids[None], use_cache=True, output_router_logits=True)
    prefill_logits = out.logits[0].float()
    r_prompt, gap = routed(out)
    pkv = out.past_key_values
    nxt = prefill_logits[-1].argmax()
    dec_ids, dec_logits, r_dec = [], [], []
    margins = [logit_margin(prefill_logits[-1])]
    for _ in range(DECODE_STEPS):
        dec_ids.append(int(nxt))
        out = model(input_ids=nxt.view(1, 1), past_key_values=pkv, use_cache=True,
                    output_router_logits=True)
        pkv = out.past_key_values
        lg = out.logits[0, -1].float()
        dec_logits.append(lg)
        r, g2 = routed(out)
        gap = min(gap, g2)
        r_dec.append(r)
        margins.append(logit_margin(lg))
        nxt = lg.argmax()
    rec.close()
    return dict(
        prompt_ids=ids.to(torch.int32),
        prefill_logits=prefill_logits.contiguous(),
        decode_ids=torch.tensor(dec_ids, dtype=torch.int32),
        decode_logits=torch.stack(dec_logits).contiguous(),
        router_ids=torch.cat([r_prompt] + r_dec, dim=0).to(torch.int32).contiguous(),
    ), gap, min(margins[:-1])  # the last decode logits choose no fed token


def save_golden(tensors, path, metadata):
    """safetensors.torch.save_file, then rewrite the JSON header with the __metadata__ keys sorted.

    The Rust writer emits __metadata__ in HashMap order (random per process); sorting it (same
    bytes, same length) makes the file byte-for-byte reproducible."""
    save_file(tensors, path, metadata=metadata)
    with open(path, "r+b") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        raw = f.read(n)
        header = json.loads(raw)
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        new = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        new = new + b" " * (n - len(new))
        assert len(new) == n and json.loads(new) == json.loads(raw)
        f.seek(8)
        f.write(new)


def logit_margin(lg):
    t = lg.topk(2).values
    return float(t[0] - t[1])


@torch.no_grad()
def full_forward(model, ids):
    out = model(input_ids=ids[None], use_cache=False)
    return out.logits[0].float()


def golden_metadata(spec, cfg):
    return {
        "model": spec["name"],
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "safetensors_version": safetensors.__version__,
        "weights_dtype": str(spec["save_dtype"]).replace("torch.", ""),
        "compute_dtype": "float32",
        "attn_implementation": "eager",
        "model_seed": str(spec["seed"]),
        "prompt_seed": str(PROMPT_SEED),
        "prompt_lengths": ",".join(map(str, PROMPT_LENGTHS)),
        "decode_steps": str(DECODE_STEPS),
        "num_layers": str(cfg.num_hidden_layers),
        "top_k": str(cfg.num_experts_per_tok),
        "router_ids_order": "torch.topk of softmax(router_logits) over experts, descending prob",
    }


def build_model(spec, tok_bytes):
    d = os.path.join(OUT, spec["name"])
    if os.path.isdir(d):
        shutil.rmtree(d)
    torch.manual_seed(spec["seed"])
    cfg = spec["config"]()
    model = spec["cls"](cfg)
    changed = perturb_(model, spec["seed"])
    log(f"  randomised {len(changed)} norm/bias tensors, e.g. {changed[:3]}")
    model = model.to(spec["save_dtype"])
    kw = dict(safe_serialization=True)
    if spec["max_shard_size"]:
        kw["max_shard_size"] = spec["max_shard_size"]
    model.save_pretrained(d, **kw)
    if spec["tokenizer"]:
        with open(os.path.join(d, "tokenizer.model"), "wb") as f:
            f.write(tok_bytes)
    return d


def generate(spec, tok_bytes):
    log(f"== {spec['name']}")
    d = build_model(spec, tok_bytes)
    # Reference outputs always come from the checkpoint as saved (bf16 weights upcast to fp32).
    model = load(d)
    tensors = {}
    for p, ids in enumerate(prompts()):
        g, gap, margin = run_model(model, ids)
        for k, v in g.items():
            tensors[f"{k}_{p}"] = v
        log(f"  prompt {p}: n={len(ids)} decode_ids={g['decode_ids'].tolist()} "
            f"min router top-k gap={gap:.3e} min greedy logit margin={margin:.3e}")
    save_golden(tensors, os.path.join(d, "golden.safetensors"),
                golden_metadata(spec, model.config))
    return d


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def check_sliding_window(d, W):
    log(f"  -- sliding window checks ({os.path.basename(d)}, sliding_window={W})")
    model = load(d)
    ids = prompts()[-1]
    n = len(ids)
    assert n > W
    out = model(input_ids=ids[None], use_cache=True, output_attentions=True)
    p = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    allowed = (j <= p) & (p - j < W)
    for layer, a in enumerate(out.attentions):  # [1, heads, n, n]
        a = a[0]
        assert torch.all(a[:, ~allowed] == 0), f"layer {layer}: weight outside window"
        assert torch.all(a[:, allowed] > 0), f"layer {layer}: zero weight inside window"
    log(f"  prefill eager attention weights: nonzero exactly where j <= p and p - j < {W}")
    # decode: the cache keeps W-1 keys, the new token makes W
    pkv = out.past_key_values
    nxt = out.logits[0, -1].argmax().view(1, 1)
    for step in range(3):
        o = model(input_ids=nxt, past_key_values=pkv, use_cache=True, output_attentions=True)
        pkv = o.past_key_values
        for a in o.attentions:
            assert a.shape[-1] == W and torch.all(a > 0), a.shape
        nxt = o.logits[0, -1].argmax().view(1, 1)
    log(f"  decode: every step attends exactly the last {W} positions (cache keeps {W - 1})")
    ref = load(d, sliding_window=None)
    a = full_forward(model, ids)
    b = full_forward(ref, ids)
    diff = (a - b).abs().max(dim=-1).values
    log(f"  |logits(window={W}) - logits(window=None)| per position (max over vocab):")
    log("   " + " ".join(f"{x:.2e}" for x in diff.tolist()))
    # positions < W see the same keys either way (differences are only fp rounding)
    assert diff[:W].max() < 1e-5, "positions < W must be unaffected by the window"
    assert diff[-1] > 1e-2, "the window must matter for the last prompt token"
    log(f"  last prompt token: max abs diff {diff[-1]:.4f} (positions < {W}: {diff[:W].max():.1e}, rounding only)")
    return diff.tolist()


@torch.no_grad()
def verify_transformers(d):
    """Fresh reload; recompute; also check decode logits against a cache-free full forward."""
    model = load(d)
    gold = load_file(os.path.join(d, "golden.safetensors"))
    worst = 0.0
    worst_full = 0.0
    for p in range(len(PROMPT_LENGTHS)):
        g, _, _ = run_model(model, gold[f"prompt_ids_{p}"].long())
        for k, v in g.items():
            ref = gold[f"{k}_{p}"]
            assert v.dtype == ref.dtype and v.shape == ref.shape, k
            if v.is_floating_point():
                worst = max(worst, (v - ref).abs().max().item())
            else:
                assert torch.equal(v, ref), f"{k}_{p} differs"
        seq = torch.cat([gold[f"prompt_ids_{p}"], gold[f"decode_ids_{p}"]]).long()
        full = full_forward(model, seq)
        n = len(gold[f"prompt_ids_{p}"])
        worst_full = max(
            worst_full,
            (full[n:] - gold[f"decode_logits_{p}"]).abs().max().item(),
            (full[:n] - gold[f"prefill_logits_{p}"]).abs().max().item(),
        )
    log(f"  reload + recompute: max abs logit diff {worst:.3e}; ids/router ids identical")
    log(f"  cache-free forward over prompt+decode ids vs golden: max abs diff {worst_full:.3e}")
    return worst, worst_full


def read_weights(d):
    idx = os.path.join(d, "model.safetensors.index.json")
    files = (sorted(set(json.load(open(idx))["weight_map"].values()))
             if os.path.exists(idx) else ["model.safetensors"])
    w = {}
    for fn in files:
        with safe_open(os.path.join(d, fn), "pt") as f:
            for k in f.keys():
                w[k] = f.get_tensor(k).float()
    return w


def reference_forward(d, ids):
    """Independent plain-PyTorch forward (no transformers) from the checkpoint files.

    This is the executable spec the C++ runtime follows: RMSNorm, GQA attention with
    NeoX-style (rotate_half) RoPE, optional sliding window j > p - W, top-k softmax routing,
    SwiGLU experts (Mixtral w1=gate, w3=up, w2=down), Qwen2-MoE shared expert with sigmoid gate.
    Returns logits [n, V] and router ids [n, L, k]."""
    cfg = json.load(open(os.path.join(d, "config.json")))
    w = read_weights(d)
    mixtral = cfg["model_type"] == "mixtral"
    H, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or H // nh
    L, k = cfg["num_hidden_layers"], cfg["num_experts_per_tok"]
    E = cfg["num_local_experts"] if mixtral else cfg["num_experts"]
    eps = cfg["rms_norm_eps"]
    theta = cfg["rope_parameters"]["rope_theta"]
    if mixtral:
        W = cfg.get("sliding_window")
    else:
        W = cfg["sliding_window"] if cfg.get("use_sliding_window") else None
    n = len(ids)

    def rms(x, g):
        return g * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    def lin(x, name, bias=False):
        y = x @ w[name + ".weight"].T
        if bias and name + ".bias" in w:
            y = y + w[name + ".bias"]
        return y

    inv = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    ang = torch.arange(n, dtype=torch.float32)[:, None] * inv[None, :]
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()

    def rope(x):  # [n, heads, hd]
        x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
        return x * cos[:, None] + torch.cat([-x2, x1], -1) * sin[:, None]

    p = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    allowed = j <= p
    if W:
        allowed &= (p - j) < W

    x = w["model.embed_tokens.weight"][ids]
    routes = []
    for li in range(L):
        pre = f"model.layers.{li}."
        h = rms(x, w[pre + "input_layernorm.weight"])
        q = rope(lin(h, pre + "self_attn.q_proj", True).view(n, nh, hd))
        kk = rope(lin(h, pre + "self_attn.k_proj", True).view(n, nkv, hd))
        v = lin(h, pre + "self_attn.v_proj", True).view(n, nkv, hd)
        rep = nh // nkv
        kk, v = kk.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        s = torch.einsum("qhd,khd->hqk", q, kk) / math.sqrt(hd)
        s = s.masked_fill(~allowed, float("-inf")).softmax(-1)
        a = torch.einsum("hqk,khd->qhd", s, v).reshape(n, nh * hd)
        x = x + lin(a, pre + "self_attn.o_proj")
        h = rms(x, w[pre + "post_attention_layernorm.weight"])
        moe = pre + ("block_sparse_moe." if mixtral else "mlp.")
        probs = (h @ w[moe + "gate.weight"].T).softmax(-1)
        tv, ti = probs.topk(k, -1)
        if mixtral or cfg.get("norm_topk_prob"):
            tv = tv / tv.sum(-1, keepdim=True)
        routes.append(ti)
        y = torch.zeros_like(x)
        for t in range(n):
            for slot in range(k):
                e = int(ti[t, slot])
                ep = f"{moe}experts.{e}."
                if mixtral:
                    f = lin(F.silu(lin(h[t], ep + "w1")) * lin(h[t], ep + "w3"), ep + "w2")
                else:
                    f = lin(F.silu(lin(h[t], ep + "gate_proj")) * lin(h[t], ep + "up_proj"),
                            ep + "down_proj")
                y[t] += tv[t, slot] * f
        if not mixtral:
            sp = moe + "shared_expert."
            shared = lin(F.silu(lin(h, sp + "gate_proj")) * lin(h, sp + "up_proj"), sp + "down_proj")
            y = y + torch.sigmoid(lin(h, moe + "shared_expert_gate")) * shared
        x = x + y
    x = rms(x, w["model.norm.weight"])
    head = w["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else w["lm_head.weight"]
    assert E == w[moe + "gate.weight"].shape[0]
    return x @ head.T, torch.stack(routes, 1)


def verify_reference(d):
    gold = load_file(os.path.join(d, "golden.safetensors"))
    worst = 0.0
    for p in range(len(PROMPT_LENGTHS)):
        seq = torch.cat([gold[f"prompt_ids_{p}"], gold[f"decode_ids_{p}"]]).long()
        n = len(gold[f"prompt_ids_{p}"])
        logits, routes = reference_forward(d, seq)
        want = torch.cat([gold[f"prefill_logits_{p}"], gold[f"decode_logits_{p}"]])
        worst = max(worst, (logits - want).abs().max().item())
        assert torch.equal(routes.to(torch.int32), gold[f"router_ids_{p}"]), f"router ids {p}"
        assert len(seq) == n + DECODE_STEPS
    log(f"  independent plain-PyTorch reference vs golden: max abs logit diff {worst:.3e}; "
        f"router ids identical")
    return worst


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--verify-only", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    log(f"transformers {transformers.__version__}, torch {torch.__version__}, "
        f"safetensors {safetensors.__version__}, sentencepiece {spm.__version__}, "
        f"numpy {np.__version__}, python {sys.version.split()[0]}")
    os.makedirs(OUT, exist_ok=True)

    if not args.verify_only:
        log("== tokenizer")
        tok = train_tokenizer()
        cases = tokenizer_cases(tok)
        with open(os.path.join(OUT, "tokenizer_cases.json"), "w", encoding="utf-8") as f:
            json.dump(cases, f, ensure_ascii=False, indent=1)
            f.write("\n")
        for c in cases:
            log(f"  {c['text']!r} -> {len(c['ids'])} ids, round trip {c['decoded'] == c['text']}")
        for spec in MODELS:
            generate(spec, tok)

    log("== verification")
    for spec in MODELS:
        d = os.path.join(OUT, spec["name"])
        log(f"- {spec['name']}")
        verify_transformers(d)
        verify_reference(d)
        if spec["name"] == "mixtral-tiny-bf16":
            check_sliding_window(d, 8)
            idx = json.load(open(os.path.join(d, "model.safetensors.index.json")))
            shards = sorted(set(idx["weight_map"].values()))
            assert len(shards) >= 3, shards
            assert "lm_head.weight" not in idx["weight_map"]
            log(f"  {len(shards)} shards, lm_head tied (not stored)")
        sp = os.path.join(d, "tokenizer.model")
        if os.path.exists(sp):
            cases = json.load(open(os.path.join(OUT, "tokenizer_cases.json"), encoding="utf-8"))
            proc = spm.SentencePieceProcessor(model_file=sp)
            for c in cases:
                assert proc.encode(c["text"]) == c["ids"]
                assert proc.decode(c["ids"]) == c["decoded"]
            log("  tokenizer.model reproduces tokenizer_cases.json")
    total = 0
    for root, _, files in os.walk(OUT):
        for fn in sorted(files):
            path = os.path.join(root, fn)
            total += os.path.getsize(path)
    log(f"total size of {OUT}: {total} bytes ({total / 2**20:.2f} MiB)")


if __name__ == "__main__":
    main()
