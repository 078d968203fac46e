#!/usr/bin/env python3
"""Train the project's small Mixtral-style model (the embedded default for the demo).

Steps, all deterministic (seeded; torch thread count fixed by --threads):
  1. SentencePiece unigram tokenizer (vocab 4096, byte fallback) trained on train.txt;
  2. the text is tokenized one paragraph per document (<s> paragraph </s>) and packed into
     sequences of --seq-len tokens;
  3. transformers.MixtralForCausalLM (8 layers, 8 experts, top-2, hidden 256, expert width 192,
     4 heads / 2 KV heads, tied embeddings) is trained with AdamW, warm-up + cosine schedule and
     Mixtral's load-balancing loss (router_aux_loss_coef), validation loss every --eval-every
     steps on valid.txt;
  4. the model is saved with save_pretrained in bf16 (Hugging Face layout: config.json +
     model.safetensors), with tokenizer.model and train_log.json beside it.

Run from the repository root (CPU is enough; see models/pydoc-moe/README.md for the figures):

    python3 scripts/train/prepare_corpus.py /tmp/corpus
    /work/venv-golden/bin/python scripts/train/train_model.py --corpus /tmp/corpus \
        --out models/pydoc-moe --steps 1500 --threads 2
"""

import argparse
import json
import math
import os
import random
import time

import numpy as np
import sentencepiece as spm
import torch
import transformers
from transformers import MixtralConfig, MixtralForCausalLM


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpus", required=True, help="folder with train.txt and valid.txt")
    p.add_argument("--out", required=True, help="output model folder")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--expert-width", type=int, default=192)
    p.add_argument("--aux-loss", type=float, default=0.02)
    return p.parse_args()


def train_tokenizer(corpus, out, vocab):
    prefix = os.path.join(out, "tokenizer")
    spm.SentencePieceTrainer.train(
        input=os.path.join(corpus, "train.txt"), model_prefix=prefix, vocab_size=vocab,
        model_type="unigram", byte_fallback=True, character_coverage=0.9995,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, input_sentence_size=2_000_000,
        shuffle_input_sentence=True, seed_sentencepiece_size=200_000, num_threads=2,
        minloglevel=2)
    os.remove(prefix + ".vocab")
    return spm.SentencePieceProcessor(model_file=prefix + ".model")


def pack(sp, path, seq_len):
    """Tokenizes one paragraph per line as <s> text </s> and packs them into rows of seq_len."""
    ids = []
    with open(path) as f:
        for line in f:
            ids.append(sp.bos_id())
            ids.extend(sp.encode(line.strip()))
            ids.append(sp.eos_id())
    rows = len(ids) // seq_len
    return torch.tensor(ids[: rows * seq_len], dtype=torch.long).view(rows, seq_len), len(ids)


def lr_at(step, args):
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def evaluate(model, valid, batch):
    model.eval()
    total, n = 0.0, 0
    for i in range(0, len(valid), batch):
        x = valid[i : i + batch]
        out = model(input_ids=x, labels=x, output_router_logits=False)
        total += out.loss.item() * len(x)
        n += len(x)
    model.train()
    return total / n


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    os.makedirs(args.out, exist_ok=True)

    sp = train_tokenizer(args.corpus, args.out, args.vocab)
    train, train_tokens = pack(sp, os.path.join(args.corpus, "train.txt"), args.seq_len)
    valid, valid_tokens = pack(sp, os.path.join(args.corpus, "valid.txt"), args.seq_len)
    print(f"tokens: train {train_tokens}, valid {valid_tokens}; rows {len(train)}/{len(valid)}",
          flush=True)

    config = MixtralConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.expert_width,
        num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2,
        head_dim=args.hidden // 4, num_local_experts=args.experts, num_experts_per_tok=2,
        max_position_embeddings=1024, rope_theta=10000.0, rms_norm_eps=1e-5,
        tie_word_embeddings=True, sliding_window=None, router_aux_loss_coef=args.aux_loss,
        output_router_logits=True, bos_token_id=1, eos_token_id=2, pad_token_id=None,
        initializer_range=0.02)
    model = MixtralForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {params/1e6:.2f} M ({2*params/1e6:.1f} MB in bf16)", flush=True)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    log = {"args": vars(args), "train_tokens": train_tokens, "valid_tokens": valid_tokens,
           "parameters": params, "evals": [], "train_loss": []}
    gen = torch.Generator().manual_seed(args.seed)
    start = time.time()
    model.train()
    running = None
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args)
        idx = torch.randint(0, len(train), (args.batch,), generator=gen)
        x = train[idx]
        out = model(input_ids=x, labels=x, output_router_logits=True)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        lm = (out.loss - args.aux_loss * out.aux_loss).item()
        running = lm if running is None else 0.98 * running + 0.02 * lm
        if step % 25 == 0 or step == args.steps - 1:
            log["train_loss"].append([step, round(running, 4), round(out.aux_loss.item(), 4)])
            el = time.time() - start
            print(f"step {step}/{args.steps} loss {running:.3f} aux {out.aux_loss.item():.3f} "
                  f"lr {lr_at(step, args):.2e} {el/60:.1f} min "
                  f"({(step+1)*args.batch*args.seq_len/el:.0f} tok/s)", flush=True)
        if (step + 1) % args.eval_every == 0 or step == args.steps - 1:
            v = evaluate(model, valid, args.batch)
            log["evals"].append([step + 1, round(v, 4)])
            print(f"  valid loss {v:.4f} (ppl {math.exp(v):.1f})", flush=True)
    log["train_minutes"] = round((time.time() - start) / 60, 1)
    log["torch"] = torch.__version__
    log["transformers"] = transformers.__version__

    model.config.output_router_logits = False
    model.to(torch.bfloat16).save_pretrained(args.out)
    for name in ("generation_config.json",):
        path = os.path.join(args.out, name)
        if os.path.exists(path):
            os.remove(path)
    with open(os.path.join(args.out, "train_log.json"), "w") as f:
        json.dump(log, f, indent=1)
    print(f"saved {args.out} after {log['train_minutes']} min", flush=True)


if __name__ == "__main__":
    main()
