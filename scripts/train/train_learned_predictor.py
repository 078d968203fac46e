#!/usr/bin/env python3
"""Train a learned lightweight expert predictor (in the spirit of SiDA) for models/pydoc-moe.

From the residual stream that leaves decoder layer `source_layer` (= 0) of a token, a small
MLP predicts, for every layer l and expert e, the probability that e is among layer l's top-2
experts for that token. The engine can then prefetch the experts of all later layers as soon as
layer 0 is done.

Predictor (the C++ runtime must compute exactly this; float32 weights):

    x      : [H]    residual stream leaving layer source_layer (hidden_states[source_layer + 1]
                    in Hugging Face terms, i.e. after the layer's MoE residual add, before any
                    later norm), H = hidden_size = 256
    xn     = x / sqrt(mean(x * x) + 1e-6)              (RMS norm, no weight)
    h      = relu(W1 @ xn + b1)                         W1 [U, H], b1 [U], U = hidden_units
    logits = W2 @ h + b2                                W2 [L*E, U], b2 [L*E]
    p[l*E + e] = sigmoid(logits[l*E + e])               P(expert e in layer l's top-k)

Row index of W2 / b2 / p is layer * num_experts + expert (layer 0 included, although the
engine already knows layer 0's experts when the predictor runs). Experts for a budget b at
layer l are the b largest p[l*E + 0 .. l*E + E-1], ties by lower expert id.

Training data: every token (bos included) of the first paragraphs of train.txt, each paragraph
tokenized as [bos] + sp.encode(text) and truncated to --max-len tokens, until --train-tokens
tokens; targets are the model's own routing (softmax of the router logits, top-2, as
MixtralTopKRouter does). Loss: BCE with logits over all L*E outputs; AdamW; fixed seed.

Evaluation on held-out paragraphs of valid.txt (--eval-tokens tokens): recall at budget b
(|top-b predicted ∩ true top-2| / 2, mean over tokens) per target layer 1..L-1, compared with
transition tables counted on the training tokens (from layer 0's experts, and from layer
t-2's experts) and with per-layer expert frequency.

Outputs: the predictor (safetensors, tensors w1 b1 w2 b2 with "format": "moe-predictor"
metadata), a JSON results file, and a C++ test reference (tests/data/
learned_predictor_reference.json: 4 input vectors and their 64 probabilities in float64).

Usage (from the repository root):

    /work/venv-golden/bin/python scripts/train/train_learned_predictor.py
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import sentencepiece as spm
import torch
from safetensors.torch import load_file, save_file
from transformers import MixtralForCausalLM


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="models/pydoc-moe")
    p.add_argument("--train-text", default="/work/corpus/train.txt")
    p.add_argument("--eval-text", default="/work/corpus/valid.txt")
    p.add_argument("--train-tokens", type=int, default=150_000)
    p.add_argument("--eval-tokens", type=int, default=30_000)
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("--source-layer", type=int, default=0)
    p.add_argument("--hidden-units", type=int, default=256)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="models/pydoc-moe/learned_predictor.safetensors")
    p.add_argument("--results", default="models/pydoc-moe/learned_predictor_eval.json")
    p.add_argument("--reference", default="tests/data/learned_predictor_reference.json")
    return p.parse_args()


def collect(model, sp, path, max_tokens, max_len, source_layer):
    """Residual streams leaving source_layer [N, H] and top-k experts per layer [N, L, k]."""
    cfg = model.config
    k = cfg.num_experts_per_tok
    xs, experts = [], []
    n = 0
    paragraphs = 0
    with torch.no_grad(), open(path) as f:
        for line in f:
            if n >= max_tokens:
                break
            line = line.strip()
            if not line:
                continue
            ids = ([sp.bos_id()] + sp.encode(line))[:max_len]
            out = model(input_ids=torch.tensor([ids]), output_hidden_states=True,
                        output_router_logits=True)
            xs.append(out.hidden_states[source_layer + 1][0].clone())
            per_layer = []
            for l in range(cfg.num_hidden_layers):
                logits = out.router_logits[l].view(len(ids), -1)
                probs = torch.softmax(logits.float(), dim=-1)
                per_layer.append(torch.topk(probs, k, dim=-1).indices)
            experts.append(torch.stack(per_layer, dim=1))
            n += len(ids)
            paragraphs += 1
    return torch.cat(xs), torch.cat(experts), paragraphs


def check_hidden_state(model, sp, source_layer):
    """hidden_states[source_layer + 1] must be the output of decoder layer source_layer."""
    seen = {}
    hook = model.model.layers[source_layer].register_forward_hook(
        lambda m, i, o: seen.__setitem__("out", o[0] if isinstance(o, tuple) else o))
    ids = torch.tensor([[sp.bos_id()] + sp.encode("The interpreter reads a line.")])
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    hook.remove()
    diff = (seen["out"].reshape(-1) - out.hidden_states[source_layer + 1].reshape(-1)).abs().max()
    assert diff == 0, f"hidden_states[{source_layer + 1}] is not layer {source_layer}'s output"


class Predictor(torch.nn.Module):
    def __init__(self, hidden, units, outputs):
        super().__init__()
        self.fc1 = torch.nn.Linear(hidden, units)
        self.fc2 = torch.nn.Linear(units, outputs)

    def forward(self, x):
        xn = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        return self.fc2(torch.relu(self.fc1(xn)))


def reference_probs(tensors, x):
    """The predictor in float64 from the saved float32 weights (numpy)."""
    w1 = tensors["w1"].double().numpy()
    b1 = tensors["b1"].double().numpy()
    w2 = tensors["w2"].double().numpy()
    b2 = tensors["b2"].double().numpy()
    x = np.asarray(x, dtype=np.float64)
    xn = x / np.sqrt(np.mean(x * x) + 1e-6)
    h = np.maximum(w1 @ xn + b1, 0.0)
    logits = w2 @ h + b2
    return 1.0 / (1.0 + np.exp(-logits))


def top_b(scores, b):
    """Indices of the b largest scores per row, ties by lower index. scores [N, E]."""
    order = np.lexsort((np.broadcast_to(np.arange(scores.shape[1]), scores.shape), -scores),
                       axis=-1)
    return order[:, :b]


def recall(pred, true):
    """pred [N, b], true [N, k] -> mean |pred ∩ true| / k."""
    hits = (pred[:, :, None] == true[:, None, :]).any(axis=1).sum(axis=1)
    return float(hits.mean() / true.shape[1])


def transition_scores(train_e, eval_e, src, dst, num_experts):
    """Score of expert e at layer dst given the token's experts at layer src: sum over those
    experts a of count(e at dst | a at src) / count(a at src) (counted on training tokens)."""
    counts = np.zeros((num_experts, num_experts))
    for a_col in range(train_e.shape[2]):
        for e_col in range(train_e.shape[2]):
            np.add.at(counts, (train_e[:, src, a_col], train_e[:, dst, e_col]), 1)
    norm = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    scores = np.zeros((eval_e.shape[0], num_experts))
    for a_col in range(eval_e.shape[2]):
        scores += norm[eval_e[:, src, a_col]]
    return scores


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    t_start = time.time()

    model = MixtralForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    sp = spm.SentencePieceProcessor(model_file=os.path.join(args.model, "tokenizer.model"))
    cfg = model.config
    L, E, K, H = (cfg.num_hidden_layers, cfg.num_local_experts, cfg.num_experts_per_tok,
                  cfg.hidden_size)
    src = args.source_layer
    check_hidden_state(model, sp, src)

    t0 = time.time()
    x_tr, e_tr, p_tr = collect(model, sp, args.train_text, args.train_tokens, args.max_len, src)
    x_ev, e_ev, p_ev = collect(model, sp, args.eval_text, args.eval_tokens, args.max_len, src)
    t_collect = time.time() - t0
    print(f"collected {len(x_tr)} training tokens ({p_tr} paragraphs), {len(x_ev)} held-out "
          f"tokens ({p_ev} paragraphs) in {t_collect:.1f} s", flush=True)

    def targets(e):
        y = torch.zeros(len(e), L * E)
        rows = torch.arange(len(e))[:, None, None].expand(-1, L, K)
        cols = torch.arange(L)[None, :, None] * E + e
        y[rows.reshape(-1), cols.reshape(-1)] = 1.0
        return y

    y_tr, y_ev = targets(e_tr), targets(e_ev)

    net = Predictor(H, args.hidden_units, L * E)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(len(x_tr) / args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=0.1)
    lossf = torch.nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(args.seed)
    losses = []
    t0 = time.time()
    for epoch in range(args.epochs):
        net.train()
        perm = torch.randperm(len(x_tr), generator=gen)
        total = 0.0
        for i in range(0, len(x_tr), args.batch):
            idx = perm[i:i + args.batch]
            loss = lossf(net(x_tr[idx]), y_tr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        net.eval()
        with torch.no_grad():
            ev = lossf(net(x_ev), y_ev).item()
        losses.append({"epoch": epoch + 1, "train": total / len(x_tr), "eval": ev})
        print(f"epoch {epoch + 1}: train loss {total / len(x_tr):.4f}  eval loss {ev:.4f}  "
              f"({time.time() - t0:.1f} s)", flush=True)
    t_train = time.time() - t0

    # Save, then evaluate from the saved float32 weights.
    tensors = {
        "w1": net.fc1.weight.detach().float().contiguous(),
        "b1": net.fc1.bias.detach().float().contiguous(),
        "w2": net.fc2.weight.detach().float().contiguous(),
        "b2": net.fc2.bias.detach().float().contiguous(),
    }
    metadata = {
        "format": "moe-predictor", "predictor": "learned",
        "num_layers": str(L), "num_experts": str(E), "top_k": str(K),
        "max_distance": str(L - 1), "evidence_layers": "1", "source_layer": str(src),
        "hidden_size": str(H), "hidden_units": str(args.hidden_units),
        "input": "residual stream leaving MoE layer source_layer, rms-normalised without "
                 "weight (eps 1e-6)",
        "activation": "relu",
        "output": "sigmoid(logits[layer * num_experts + expert])",
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    save_file(tensors, args.out, metadata=metadata)
    saved = load_file(args.out)

    with torch.no_grad():
        xe = x_ev * torch.rsqrt(x_ev.pow(2).mean(-1, keepdim=True) + 1e-6)
        probs = torch.sigmoid(torch.relu(xe @ saved["w1"].T + saved["b1"]) @ saved["w2"].T
                              + saved["b2"]).numpy()

    tr = e_tr.numpy()
    evn = e_ev.numpy()
    freq = np.zeros((L, E))
    for l in range(L):
        np.add.at(freq[l], tr[:, l, :].reshape(-1), 1)

    budgets = [K, 2 * K]
    table = []
    for t in range(1, L):
        row = {"layer": t}
        true = evn[:, t, :]
        cands = {
            "learned": probs[:, t * E:(t + 1) * E],
            "transition_from_0": transition_scores(tr, evn, 0, t, E),
            "transition_from_t_minus_2": (transition_scores(tr, evn, t - 2, t, E)
                                          if t >= 2 else None),
            "frequency": np.broadcast_to(freq[t], (len(evn), E)),
        }
        for b in budgets:
            for name, s in cands.items():
                row[f"{name}@{b}"] = None if s is None else recall(top_b(s, b), true)
        table.append(row)
    mean_row = {"layer": "mean 2..%d" % (L - 1)}
    for key in table[0]:
        if key != "layer":
            mean_row[key] = float(np.mean([r[key] for r in table[1:]]))
    table.append(mean_row)

    names = ["learned", "transition_from_0", "transition_from_t_minus_2", "frequency"]
    short = {"learned": "learned", "transition_from_0": "trans<-0",
             "transition_from_t_minus_2": "trans<-t-2", "frequency": "freq"}
    header = f"{'layer':>9} | " + " | ".join(
        " ".join(f"{short[n]:>10}" for n in names) + f"  (b={b})" for b in budgets)
    print(f"\nrecall on {len(evn)} held-out tokens (|top-b ∩ true top-{K}| / {K})")
    print(header)
    for r in table:
        cells = []
        for b in budgets:
            vals = [r[f"{n}@{b}"] for n in names]
            cells.append(" ".join(f"{'-':>10}" if v is None else f"{v:>10.4f}" for v in vals)
                         + "       ")
        print(f"{str(r['layer']):>9} | " + " | ".join(cells))

    # C++ test reference: 3 real held-out residual streams and a vector of 0.5.
    picks = [0, len(x_ev) // 2, len(x_ev) - 1]
    inputs = [x_ev[i].double().tolist() for i in picks] + [[0.5] * H]
    reference = {
        "description": "learned expert predictor reference: probabilities in float64 from the "
                       "float32 weights of " + args.out,
        "predictor": args.out,
        "hidden_size": H, "num_layers": L, "num_experts": E,
        "cases": [{"input": inp, "probabilities": reference_probs(saved, inp).tolist()}
                  for inp in inputs],
    }
    os.makedirs(os.path.dirname(args.reference) or ".", exist_ok=True)
    with open(args.reference, "w") as f:
        json.dump(reference, f)
        f.write("\n")

    wall = time.time() - t_start
    results = {
        "command": " ".join([sys.executable] + sys.argv),
        "model": args.model,
        "train_text": args.train_text, "eval_text": args.eval_text,
        "train_tokens": len(x_tr), "train_paragraphs": p_tr,
        "eval_tokens": len(x_ev), "eval_paragraphs": p_ev,
        "max_len": args.max_len, "source_layer": src, "hidden_units": args.hidden_units,
        "epochs": args.epochs, "batch": args.batch, "lr": args.lr,
        "weight_decay": args.weight_decay, "seed": args.seed, "threads": args.threads,
        "budgets": budgets,
        "recall_definition": f"|top-b predicted ∩ true top-{K}| / {K}, mean over held-out tokens",
        "losses": losses,
        "collect_seconds": round(t_collect, 1), "train_seconds": round(t_train, 1),
        "wall_seconds": round(wall, 1),
        "predictor_bytes": os.path.getsize(args.out),
        "table": table,
    }
    with open(args.results, "w") as f:
        json.dump(results, f, indent=1)
        f.write("\n")
    print(f"\nwall time {wall:.1f} s (collect {t_collect:.1f} s, train {t_train:.1f} s); "
          f"{args.out}: {os.path.getsize(args.out)} bytes")


if __name__ == "__main__":
    main()
