#!/usr/bin/env python3
"""The reference service for the load benchmark: what a user would otherwise write —
FastAPI + transformers (PyTorch), mean pooling and L2 normalization as
sentence-transformers does for all-MiniLM-L6-v2, one uvicorn worker.

    .venv-ref/bin/python scripts/serve_reference.py MODEL_DIR --port 8081 --threads 2

POST /v1/embed {"inputs": str | [str]} -> [{"text", "embedding"}], the same shape as
slimformer's route.
"""
import argparse

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import AutoModel, AutoTokenizer


class EmbedRequest(BaseModel):
    inputs: str | list[str]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--port", type=int, default=8081)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-len", type=int, default=256)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModel.from_pretrained(args.model).eval()
    app = FastAPI()

    @app.post("/v1/embed")
    def embed(req: EmbedRequest):
        texts = [req.inputs] if isinstance(req.inputs, str) else req.inputs
        enc = tokenizer(texts, padding=True, truncation=True, max_length=args.max_len, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return [{"text": t, "embedding": e} for t, e in zip(texts, pooled.tolist())]

    @app.get("/health")
    def health():
        return {"status": "ok"}

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", workers=1)


if __name__ == "__main__":
    main()
