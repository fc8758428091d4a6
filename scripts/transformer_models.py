"""Transformer models for the tests and benchmarks: transformers' BertModel / GPT2Model with seeded
random parameters, exported to ONNX (opset 17, fixed shapes, input token ids, output the last
hidden state). Needs torch and transformers.
"""

from __future__ import annotations


def export_transformer(kind: str, path, seq: int, seed: int = 0, **sizes) -> None:
    """Export a seeded random BertModel ("bert") or GPT2Model ("gpt2") of config `sizes` to `path`.

    Biases and LayerNorm parameters get seeded noise too (transformers initializes them to 0 and 1),
    so every operand of the quantized ops carries information. BERT gets explicit token_type_ids
    (zeros): its default buffer path exports a GatherElements that onnx.reference cannot evaluate
    (its kernel reshapes wrongly when the gathered axis holds more than 64 entries).
    """
    import torch
    import transformers
    torch.manual_seed(seed)
    if kind == "bert":
        model = transformers.BertModel(transformers.BertConfig(**sizes))
    else:
        model = transformers.GPT2Model(transformers.GPT2Config(**sizes))
    model.eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name or ".ln_" in name:
                p.add_(0.05 * torch.randn_like(p))

    class LastHiddenState(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids):
            extra = {"token_type_ids": torch.zeros_like(input_ids)} if kind == "bert" else {}
            return self.model(input_ids=input_ids, **extra).last_hidden_state

    ids = torch.zeros((1, seq), dtype=torch.int64)
    torch.onnx.export(LastHiddenState(), (ids,), str(path), input_names=["input_ids"], output_names=["hidden"],
                      dynamo=False, opset_version=17)
