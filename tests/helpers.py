"""Tiny real transformers models and hand-made batches for unit tests."""

import torch


def tiny_llama(vocab=40, hidden=16, layers=2, heads=2, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(cfg).eval()


def hand_batch():
    """Two rows: prompt tokens labelled -100, answers of different lengths, right padding (0)."""
    input_ids = torch.tensor([[1, 5, 6, 7, 9, 10, 11, 2],
                              [1, 8, 7, 12, 13, 2, 0, 0]])
    labels = torch.tensor([[-100, -100, -100, -100, 9, 10, 11, 2],
                           [-100, -100, -100, 12, 13, 2, -100, -100]])
    attention_mask = (torch.arange(8)[None, :] < torch.tensor([[8], [6]])).long()
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask,
            "index": torch.tensor([0, 1])}


def direct_token_logprobs(model, batch):
    """Per row, the list of log p(y_t | ...) for its label tokens, computed one by one in float64."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    rows = []
    for b in range(logits.shape[0]):
        lp = []
        for t in range(1, logits.shape[1]):
            y = int(batch["labels"][b, t])
            if y == -100:
                continue
            lp.append(float(torch.log_softmax(logits[b, t - 1], -1)[y]))
        rows.append(lp)
    return rows
