"""The naive baseline: the "ProductionGemmaService" a Gemma tutorial builds, behind the same gRPC API.

One transformers model, one lock, one `model.generate` per request: requests are served strictly one at a time and
the whole answer comes back when it is done (GenerateStream sends it as one chunk, so TTFT equals end-to-end latency).
It speaks gemma.serving.v1 `Generate` / `GenerateStream` so the same load generator measures it and the platform.

    .venv/bin/python bench/naive_service.py --port 50061            # tiny://text on CPU; prints "PORT <n>" when up
    .venv/bin/python bench/naive_service.py --device cuda --dtype bfloat16 --model-dir /path/to/checkpoint
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "services"))


class ProductionGemmaService:
    """What the tutorial writes: load once, then lock + apply_chat_template + generate + decode per request."""

    def __init__(self, model_dir: str, *, device: str = "cpu", dtype: str = "float32") -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).to(device).eval()
        self.lock = threading.Lock()

    def generate(self, prompt: str, *, max_new_tokens: int, temperature: float = 0.0, seed: int | None = None):
        """(text, prompt tokens, completion tokens, finish reason) for one user turn."""
        with self.lock, self.torch.inference_mode():
            inputs = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": [{"type": "text", "text": prompt}]}],
                add_generation_prompt=True,
                return_tensors="pt",
                return_dict=True,
            ).to(self.device)
            if seed is not None:
                self.torch.manual_seed(seed)
            kwargs = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, top_p=None, top_k=None, **kwargs)
            n_prompt = inputs["input_ids"].shape[-1]
            new = out[0][n_prompt:]
            eos = self.model.generation_config.eos_token_id
            eos = set(eos if isinstance(eos, list) else [eos])
            stopped = len(new) > 0 and int(new[-1]) in eos
            text = self.tokenizer.decode(new, skip_special_tokens=True)
            return text, int(n_prompt), len(new), "stop" if stopped else "length"


def build_server(service: ProductionGemmaService, port: int):
    import grpc
    from gemma_serving.api import inference_pb2 as pb
    from gemma_serving.api import inference_pb2_grpc as pb_grpc

    finish = {"stop": pb.FINISH_REASON_STOP, "length": pb.FINISH_REASON_LENGTH}

    class Servicer(pb_grpc.InferenceServicer):
        async def _run(self, request):
            prompt = "\n".join(p.text for m in request.messages for p in m.parts if p.HasField("text"))
            s = request.sampling
            return await asyncio.to_thread(
                service.generate,
                prompt,
                max_new_tokens=s.max_tokens if s.HasField("max_tokens") else 64,
                temperature=s.temperature if s.HasField("temperature") else 0.0,
                seed=s.seed if s.HasField("seed") else None,
            )

        async def Generate(self, request, context):
            text, n_prompt, n_out, reason = await self._run(request)
            return pb.GenerateResponse(
                request_id=uuid.uuid4().hex, model=request.model, text=text, finish_reason=finish[reason],
                usage=pb.Usage(prompt_tokens=n_prompt, completion_tokens=n_out, total_tokens=n_prompt + n_out),
            )

        async def GenerateStream(self, request, context):
            text, n_prompt, n_out, reason = await self._run(request)
            yield pb.GenerateChunk(
                request_id=uuid.uuid4().hex, text=text, finish_reason=finish[reason],
                usage=pb.Usage(prompt_tokens=n_prompt, completion_tokens=n_out, total_tokens=n_prompt + n_out),
            )

    server = grpc.aio.server()
    pb_grpc.add_InferenceServicer_to_server(Servicer(), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    return server, bound


async def serve(args: argparse.Namespace) -> None:
    if args.model_dir:
        model_dir = args.model_dir
    else:
        from gemma_serving.models import resolve_model_source

        model_dir = str(resolve_model_source(args.source, progress=lambda m: None))
    began = time.monotonic()
    service = await asyncio.to_thread(ProductionGemmaService, model_dir, device=args.device, dtype=args.dtype)
    # One warm-up call so that the first measured request does not pay for lazy initialisation.
    await asyncio.to_thread(service.generate, "warm up", max_new_tokens=4)
    server, port = build_server(service, args.port)
    await server.start()
    print(f"PORT {port} load_s={time.monotonic() - began:.1f}", flush=True)
    if args.stdin_lifetime:
        # Run until the parent closes our stdin.
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await server.stop(0)
    else:
        await server.wait_for_termination()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--source", default="tiny://text", help="model source (tiny://text builds the local tiny model)")
    p.add_argument("--model-dir", help="checkpoint directory (overrides --source)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--stdin-lifetime", action="store_true", help="exit when stdin closes (used by serving.py)")
    asyncio.run(serve(p.parse_args()))


if __name__ == "__main__":
    main()
