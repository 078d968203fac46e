#!/usr/bin/env python3
"""Independent check of the engine's next-layer gate recall, with Hugging Face transformers.

For every token of every prompt (prefill only) and every layer l >= 1, the next-layer gate
predicts layer l's experts by applying layer l's router (after layer l's
post_attention_layernorm) to the residual stream that leaves layer l - 1; the router's real
top-k at layer l is the truth. Recall at budget k = shared experts / k. Layer 0 is not
predicted by the gate (the engine falls back to layer frequency there), so it is left out.

Compare with `moe-run --prompt-file PROMPTS --max-tokens 1 --predictor gate`, whose per-layer
recall covers exactly the same prompt tokens.

Usage: gate_recall.py MODEL_DIR PROMPTS_FILE
"""

import sys

import sentencepiece as spm
import torch
from transformers import MixtralForCausalLM


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    model_dir, prompts_file = sys.argv[1:]
    torch.set_num_threads(2)
    model = MixtralForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    sp = spm.SentencePieceProcessor(model_file=f"{model_dir}/tokenizer.model")
    cfg = model.config
    k = cfg.num_experts_per_tok
    layers = model.model.layers
    found = [0] * cfg.num_hidden_layers
    total = [0] * cfg.num_hidden_layers
    with torch.no_grad():
        for line in open(prompts_file):
            if not line.strip():
                continue
            ids = torch.tensor([[sp.bos_id()] + sp.encode(line.strip())])
            out = model(input_ids=ids, output_hidden_states=True, output_router_logits=True)
            for l in range(1, cfg.num_hidden_layers):
                h = out.hidden_states[l][0]  # leaves layer l - 1
                norm = layers[l].post_attention_layernorm
                gate = layers[l].mlp.gate if hasattr(layers[l], "mlp") else \
                    layers[l].block_sparse_moe.gate
                weight = gate.weight
                pred = torch.topk(torch.nn.functional.linear(norm(h), weight), k, dim=-1).indices
                true = torch.topk(out.router_logits[l].view(ids.shape[1], -1), k, dim=-1).indices
                for p, t in zip(pred.tolist(), true.tolist()):
                    found[l] += len(set(p) & set(t))
                    total[l] += k
    per_layer = [found[l] / total[l] for l in range(1, cfg.num_hidden_layers)]
    print("gate recall per layer 1..L-1:", " ".join(f"{r:.4f}" for r in per_layer))
    past2 = sum(found[2:]) / sum(total[2:])
    print(f"layers 2+: {past2:.4f} over {total[2] // k} tokens")


if __name__ == "__main__":
    main()
